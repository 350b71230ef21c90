"""`leafseg serve` end to end in a real browser: the command starts the page on a free loopback port with a
tiny trained UniMatch V2 (fixed classes) and MaskCLIP on a tiny random CLIP (typed classes); headless
Chromium, driven through chromedriver, uploads an image, types class names, segments, meets an error
message, picks a synthetic scene with the other model, and saves a screenshot; every request the page
made stayed on this machine; SIGTERM stops the server and removes its scenes folder.

Needs Debian's ``chromium`` and ``chromium-driver``. Without them the test skips, unless
LEAFSEG_REQUIRE_BROWSER=1 (``.ci/run`` sets it, after installing them), where it fails.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from leafseg.data.io import write_image
from leafseg.serve.handlers import write_scenes
from serve_tiny import clip_folder, unimatch_weights

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")
WAIT = 60  # seconds any one step of the page may take on a busy machine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def browser_paths():
    if CHROMIUM and CHROMEDRIVER:
        return CHROMIUM, CHROMEDRIVER
    message = "headless Chromium needed: apt-get install chromium chromium-driver"
    if os.environ.get("LEAFSEG_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message} (LEAFSEG_REQUIRE_BROWSER=1: this test may not skip)")
    pytest.skip(message)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``python -m leafseg serve ...`` in a child process; its output lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "leafseg", "serve", *args], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching ``pattern``; fails with the output so far after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        pytest.fail(f"leafseg serve never printed {pattern!r}; its output:\n{''.join(self.seen)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def _chromium(paths, profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def _rows(driver) -> tuple[list[tuple[str, float, float]], list[str]]:
    """(name, exact share, shown percent) of every class found, as the shares table lists them, and the
    names of the classes it lists as not in the image."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#shares tr[data-name]")
    found = [(r.get_attribute("data-name"), float(r.get_attribute("data-share")),
              float(r.find_element(By.CSS_SELECTOR, ".leafseg-share").text.rstrip(" %"))) for r in rows]
    absent = driver.find_elements(By.CSS_SELECTOR, "#shares tr[data-absent]")
    return found, absent[0].get_attribute("data-absent").split(", ") if absent else []


def _segment(driver, wait, expect: str) -> str:
    """Press Segment and wait until the status line says ``expect``; returns the status text."""
    driver.find_element(By.CSS_SELECTOR, "#segment").click()
    wait.until(lambda d: expect in d.find_element(By.ID, "status").text)
    return driver.find_element(By.ID, "status").text


def _type_classes(driver, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, "#classes textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)


def _pick_model(driver, wait, label: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#model input[value="{label}"]').click()
    wait.until(lambda d: label in d.find_element(By.CSS_SELECTOR, "#model label.selected").text)


def _overlay_size(driver, wait) -> tuple[int, int]:
    """(width, height) of the overlay picture the page shows, once it has loaded."""
    def loaded(d):
        img = d.find_elements(By.CSS_SELECTOR, "#overlay img")
        return bool(img) and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img[0]) \
            and img[0]

    img = wait.until(loaded)
    return tuple(driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img))


def _requested_hosts(driver, page: str) -> set[str]:
    """The host:port of every http(s) request made by the page at ``page`` (its document and everything it
    loaded since), and of every websocket opened. Chromium's own start-up requests are not the page's."""
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent" and params.get("documentURL", "").startswith(page):
            url = params["request"]["url"]
        elif message["method"] == "Network.webSocketCreated":
            url = params["url"]
        else:
            continue
        if re.match(r"(https?|wss?)://", url):
            hosts.add(url.split("/")[2])
    return hosts


def _maskclip_on_an_upload(driver, wait, photo: Path) -> None:
    """MaskCLIP, an uploaded 128 x 96 image and three typed class names."""
    _pick_model(driver, wait, "maskclip (clip_vitb16)")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#classes textarea").is_enabled())
    driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(photo))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))
    _type_classes(driver, "sky, grass, ball")
    status = _segment(driver, wait, "maskclip (clip_vitb16): 3 classes on a 128 x 96 image")
    width, height = _overlay_size(driver, wait)
    assert height == 96 and width > 128, (width, height, status)  # the image's own size, a legend beside it
    rows, absent = _rows(driver)
    assert sorted([name for name, _, _ in rows] + absent) == ["ball", "grass", "sky"]
    assert sum(share for _, share, _ in rows) == pytest.approx(1.0, abs=1e-5)
    assert sum(shown for _, _, shown in rows) == pytest.approx(100.0, abs=0.05 * len(rows))


def _no_class_names(driver, wait) -> None:
    """A mistake is a message in the page, the old answer is cleared, and the page keeps working."""
    _type_classes(driver, "")
    _segment(driver, wait, "Cannot segment: Type at least one class name")
    assert not driver.find_elements(By.CSS_SELECTOR, "#shares tr")


def _fixed_classes_on_a_scene(driver, wait, label: str) -> None:
    """The trained model shows its own classes, read-only, and labels a picked synthetic scene with them."""
    _pick_model(driver, wait, label)
    wait.until(lambda d: not d.find_element(By.CSS_SELECTOR, "#classes textarea").is_enabled())
    fixed = driver.find_element(By.CSS_SELECTOR, "#classes textarea").get_attribute("value")
    assert fixed.startswith("sky, grass, water")
    uploaded = driver.find_element(By.CSS_SELECTOR, "#image img").get_attribute("src")
    driver.find_element(By.CSS_SELECTOR, "#scenes button").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#image img").get_attribute("src") != uploaded)
    _segment(driver, wait, f"{label}: 12 classes on a 96 x 96 image")
    assert _overlay_size(driver, wait)[1] == 96
    rows, absent = _rows(driver)
    assert sorted([name for name, _, _ in rows] + absent) == sorted(fixed.split(", "))
    assert sum(shown for _, _, shown in rows) == pytest.approx(100.0, abs=0.05 * len(rows))
    assert rows == sorted(rows, key=lambda r: -r[1])  # largest share first


def test_the_page_segments_an_image_in_chromium(browser_paths, tmp_path):
    clip, unimatch = clip_folder(tmp_path), unimatch_weights(tmp_path)
    photo = write_image(tmp_path / "photo.png", _cropped_scene(tmp_path))
    port = _free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path), GRADIO_TEMP_DIR=str(tmp_path / "gradio"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    server = ServeProcess(["--model", str(unimatch), "--method", "maskclip", "--backbone", "clip_vitb16",
                           "--weights", str(clip), "--scenes", "3", "--scene-size", "96", "--port", str(port)], env)
    driver = None
    try:
        match = server.wait_for(r"leafseg serve: (http://127\.0\.0\.1:\d+/) .*3 scenes in (\S+);", WAIT)
        url, scenes_dir = match.group(1), Path(match.group(2))
        assert url == f"http://127.0.0.1:{port}/" and len(list(scenes_dir.glob("scene_*.png"))) == 3
        driver = _chromium(browser_paths, tmp_path / "chromium-profile")
        wait = WebDriverWait(driver, WAIT)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        _maskclip_on_an_upload(driver, wait, photo)
        _no_class_names(driver, wait)
        _fixed_classes_on_a_scene(driver, wait, f"unimatch/{unimatch.name} (unimatch_v2)")
        shot = tmp_path / "serve.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"\nscreenshot of the page: {shot}")
        assert _requested_hosts(driver, url) == {f"127.0.0.1:{port}"}  # nothing fetched from outside the machine
    finally:
        if driver is not None:
            driver.quit()
        code = server.stop()
    assert code == 0, "".join(server.seen)
    assert not scenes_dir.exists()  # the temporary scenes folder went with the server


def _cropped_scene(tmp_path: Path):
    """A 96 x 128 (H x W) synthetic picture: not square, so a transposed answer cannot pass."""
    from leafseg.data.io import read_image

    return read_image(write_scenes(tmp_path / "photo", 1, size=128)[0])[:96]
