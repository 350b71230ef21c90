"""Atomic file writes: a temporary file in the destination folder, then a rename.

A reader never sees a half-written file, and an interrupted write leaves the previous version in place.
Every writer of the package (masks, split files, JSON records, checkpoints) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True,
                 fsync: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path`` and rename it onto ``path``.

    The parent folder is created if needed; ``fsync`` flushes the data to disk before the rename (for
    checkpoints, which must survive a crash of the machine). On any error the temporary file is removed
    and the error re-raised. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)
