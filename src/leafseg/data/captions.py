"""The ``captions.jsonl`` index of an image-caption folder: one reader, one writer.

Format: UTF-8 text, one JSON object per line, one line per image; blank lines are ignored::

    {"image": "images/train/0000000.png", "caption": "a dog on the grass", "split": "train",
     "mask": "masks/train/0000000.png", "classes": [0, 7]}

image: path of the image, relative to the folder holding captions.jsonl (always required).
caption: the caption (str). split: the split the image belongs to (str). mask: path of its
class-index mask, relative like ``image``. classes: the class ids present (list of int).
Readers ask for the keys they need (``required``); other keys are kept as they are. The
synthetic world (:meth:`leafseg.data.SyntheticWorld.write`) writes all five keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from leafseg.data.io import DataError
from leafseg.files import atomic_write_text

FILENAME = "captions.jsonl"


def read_captions(path: str | os.PathLike, required: Sequence[str] = ("image",)) -> list[dict]:
    """The records of a captions.jsonl file, in file order.

    required: keys every record must have (``image`` is always required).
    Raises :class:`~leafseg.data.io.DataError` naming the file when it is missing or unreadable,
    and the file and line when a line is not a JSON object or lacks a required key.
    """
    path = Path(path)
    keys = ("image", *(k for k in required if k != "image"))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not found (an image-caption folder indexes its images in {FILENAME})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}, line {lineno}: malformed record (not JSON: {exc})") from exc
        if not isinstance(rec, dict):
            raise DataError(f"{path}, line {lineno}: malformed record (a JSON object is needed, "
                            f"got {type(rec).__name__})")
        missing = [k for k in keys if k not in rec]
        if missing:
            raise DataError(f"{path}, line {lineno}: malformed record (missing {', '.join(missing)}; "
                            f"needs the keys {', '.join(keys)})")
        records.append(rec)
    return records


def write_captions(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write ``records`` (dicts with at least ``image``) as a captions.jsonl file, atomically."""
    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in records))
