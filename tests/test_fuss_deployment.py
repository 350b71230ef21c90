"""FUSS on Flower's deployment runtime, on loopback: a SuperLink and two SuperNodes (``--insecure``, an
in-memory database, free ports) and ``flwr run configs/fuss/app`` for 2 rounds; every process started here
(and every process those start) is stopped at the end, whatever happens."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuss_tiny import write_tiny_config

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args[0]} ended with status {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += parents.get(child, [])
    return out


def stop(processes: list[subprocess.Popen]) -> None:
    """Terminate the processes started here and everything they started, by process id."""
    below = {p.pid: descendants(p.pid) for p in processes}
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    time.sleep(1)
    for pids in below.values():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="the Flower executables are not installed")
def test_a_superlink_two_supernodes_and_flwr_run_on_loopback(tmp_path):
    config = write_tiny_config(tmp_path / "fuss.yaml", tmp_path / "world", tmp_path / "run")
    link = free_port()
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "loop"\n\n[superlink.loop]\n'
                                      f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
           "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("superlink", "node0", "node1")}
    started: list[subprocess.Popen] = []
    try:
        started.append(subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--database", ":flwr-in-memory:", "--port", str(link),
             "--disable-runtime-dependency-installation"],
            env=env, cwd=tmp_path, stdout=logs["superlink"], stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_port(link, started[0], timeout=120)
        for i in range(2):
            started.append(subprocess.Popen(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}", "--port",
                 str(free_port()), "--node-config", f"partition-id={i} num-partitions=2"],
                env=env, cwd=tmp_path, stdout=logs[f"node{i}"], stderr=subprocess.STDOUT, start_new_session=True))
        done = subprocess.run([str(BIN / "flwr"), "run", str(ROOT / "configs" / "fuss" / "app"), "loop",
                               "--run-config", f"config='{config}'", "--stream"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.monotonic() + 120  # the stream may end just before the ServerApp's last write
        while not (tmp_path / "run" / "results.json").is_file() and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        stop(started)
        for log in logs.values():
            log.close()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert results["rounds"] == 2 and [r["round"] for r in rows] == [1, 2]
    assert all(r["answered"] == 2 and r["rejected"] == {} and 0 < r["miou"] < 1 for r in rows)
    assert (tmp_path / "run" / "final.safetensors").is_file()
    assert all(p.poll() is not None for p in started)
