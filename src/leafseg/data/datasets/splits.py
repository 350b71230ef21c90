"""Split files: one ``image_relpath mask_relpath`` pair per line, relative to the dataset root.

This is the format of the semi-supervised literature's split lists (UniMatch:
``JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png``); CamVid's SegNet lists
(``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``) are read the same way once
their prefix is stripped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from leafseg.data.io import DataError
from leafseg.files import atomic_write_text

Pair = tuple[Path, Path]


def _resolve(text: str, root: Path, strip_prefix: str) -> Path:
    if strip_prefix and text.startswith(strip_prefix):
        text = text[len(strip_prefix):]
    path = Path(text)
    if path.is_absolute() and path.exists():
        return path
    return root / text.lstrip("/")


def read_split_file(path: str | os.PathLike, root: str | os.PathLike, strip_prefix: str = "") -> list[Pair]:
    """The (image path, mask path) pairs listed in ``path``, resolved against ``root``.

    Lines hold exactly two whitespace-separated paths; blank lines and ``#`` comments are
    skipped. ``strip_prefix`` is removed from the start of every path first. A path that is
    absolute and exists is kept as is. A malformed line raises DataError naming file and line.
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DataError(f"{path}: split file not found (expected lines 'image_relpath mask_relpath').")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        if len(fields) != 2:
            raise DataError(f"{path}, line {lineno}: expected 'image_relpath mask_relpath', got {line.strip()!r}.")
        pairs.append((_resolve(fields[0], root, strip_prefix), _resolve(fields[1], root, strip_prefix)))
    if not pairs:
        raise DataError(f"{path}: split file lists no samples.")
    return pairs


def _relative(p: str | os.PathLike, root: Path | None) -> str:
    path = Path(p)
    if root is not None:
        try:
            path = path.relative_to(root)
        except ValueError:
            raise ValueError(f"{p} is not under the dataset root {root}") from None
    text = path.as_posix()
    if any(c.isspace() for c in text):
        raise ValueError(f"{text!r}: split-file paths cannot contain whitespace")
    return text


def write_split_file(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]], path: str | os.PathLike,
                     root: str | os.PathLike | None = None) -> Path:
    """Write (image, mask) pairs as ``image_relpath mask_relpath`` lines, atomically; returns ``path``.

    With ``root``, the paths are written relative to it (each must lie under it); without,
    they are written as given (relative paths are expected, absolute ones are kept).
    """
    base = Path(root) if root is not None else None
    lines = [f"{_relative(img, base)} {_relative(mask, base)}\n" for img, mask in pairs]
    return atomic_write_text(path, "".join(lines))
