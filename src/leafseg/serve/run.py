"""``leafseg serve`` from start to stop: load the models, write the synthetic scenes, serve the page until
Ctrl-C (or SIGTERM), then stop the server and remove the scenes' temporary folder.

    serve(models=["runs/sseg_synthetic/final.pt"], methods=["kmeans"], backbone="pixels8", port=7860)
"""

from __future__ import annotations

import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from leafseg.errors import ConfigError
from leafseg.serve.handlers import MAX_SIDE
from leafseg.serve.models import ModelShelf


def check_port(host: str, port: int) -> None:
    """Raise ConfigError unless a server can listen on ``host``:``port`` now."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.bind(infos[0][4])
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port or "
                          "--host") from None


def fill_shelf(shelf: ModelShelf, models: list[str], methods: list[str], backbone: str | None,
               weights: str | None) -> ModelShelf:
    """Load every checkpoint of ``models`` and build every training-free method of ``methods`` on
    ``backbone`` / ``weights`` into ``shelf``; with neither, k-means on raw pixels (pixels8)."""
    if (backbone or weights) and not methods:
        raise ConfigError("--backbone and --weights choose the encoder of --method (maskclip, sclip, clearclip, "
                          "naclip or kmeans); add --method maskclip, for example")
    for path in models:
        shelf.add_checkpoint(path)
    for name in dict.fromkeys(methods):
        shelf.add_method(name, backbone, weights)
    if not models and not methods:
        shelf.add_method("kmeans", "pixels8")
    return shelf


def serve(models: list[str] = (), methods: list[str] = (), backbone: str | None = None, weights: str | None = None,
          *, classes: str = "", scenes: int = 6, scene_size: int = 192, scenes_dir: str | Path | None = None,
          seed: int = 0, max_side: int | None = MAX_SIDE, host: str = "127.0.0.1", port: int = 7860,
          device: str = "cpu", announce: Callable[[str], None] = print) -> None:
    """Serve the page until interrupted (Ctrl-C or SIGTERM). ``announce`` gets the page's address once it
    answers. scenes: how many synthetic scenes the page offers, written into ``scenes_dir`` (default: a
    temporary folder removed at the end). Every check (port, files, weights) runs before the server
    starts, so a mistake ends the command with one message."""
    from leafseg.serve.handlers import write_scenes
    from leafseg.serve.page import build_page, start_server

    check_port(host, port)
    shelf = fill_shelf(ModelShelf(device), list(models), list(methods), backbone, weights)
    with ExitStack() as stack:
        if scenes_dir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leafseg-scenes-")))
        else:
            folder = Path(scenes_dir)
        paths = write_scenes(folder, scenes, size=scene_size, seed=seed) if scenes else []
        page = build_page(shelf, paths, classes=classes, max_side=max_side)
        server = start_server(page, host, port, allowed=[folder.resolve()])
        stack.callback(server.close)
        scenes_note = f", {len(paths)} scenes in {folder}" if paths else ""
        announce(f"leafseg serve: {server.url} ({len(shelf.labels())} models{scenes_note}; Ctrl-C stops it)")
        wait_for_stop()


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
