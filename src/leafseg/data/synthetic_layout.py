"""The synthetic world on disk: the folder layout, its index files, and reading it back.

Layout written by :meth:`leafseg.data.SyntheticWorld.write`::

    root/images/<split>/<name>.png   RGB uint8 scenes
    root/masks/<split>/<name>.png    mode 'L' class indices (255 = ignore, never produced)
    root/captions.jsonl              one JSON object per scene (see :mod:`leafseg.data.captions`):
                                     {"image": "images/train/0000000.png",
                                      "mask": "masks/train/0000000.png",
                                      "caption": "...", "split": "train", "classes": [ids]}
    root/classes.json                class names, stuff/things, synonyms, eval synonyms,
                                     generator settings (seed, size, domain, ...), split sizes

``<name>`` is the scene's global index with seven digits (``0000042``, ``1000003``).

This module knows the files, not the generator: the world hands it scene records and its
metadata (:func:`check_generator`, :func:`write_index`); :func:`load_synthetic` reads a folder back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from leafseg.data.captions import FILENAME as CAPTIONS_FILE
from leafseg.data.captions import read_captions, write_captions
from leafseg.data.io import DataError
from leafseg.files import atomic_write_text

IGNORE_INDEX = 255
CLASSES_FILE = "classes.json"
SCENE_KEYS = ("image", "mask", "caption", "split")


def scene_paths(split: str, name: str) -> tuple[str, str]:
    """(image, mask) paths of scene ``name`` of ``split``, relative to the root."""
    return f"images/{split}/{name}.png", f"masks/{split}/{name}.png"


def check_generator(root: str | os.PathLike, settings: dict) -> None:
    """Refuse (ValueError) a root that already holds scenes from other generator ``settings``."""
    meta_path = Path(root) / CLASSES_FILE
    if meta_path.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8")).get("generator")
        if old != settings:
            raise ValueError(f"{root} holds scenes from other generator settings ({old}); "
                             f"write these ({settings}) to another folder.")


def write_index(root: str | os.PathLike, records: list[dict], *, classes: list[str], stuff: list[str],
                things: list[str], synonyms: dict[str, list[str]], eval_synonyms: dict[str, list[str]],
                generator: dict, split_offsets: dict[str, int]) -> None:
    """Add scene ``records`` (dicts with :data:`SCENE_KEYS` and ``classes``) to ``root``'s index.

    A record whose image is already indexed replaces the old one; captions.jsonl is kept sorted
    by (split, image). classes.json is rewritten with the given class metadata and generator
    settings, :data:`IGNORE_INDEX` and the number of scenes per split. Both files are written
    atomically.
    """
    root = Path(root)
    cap_path = root / CAPTIONS_FILE
    fresh = {r["image"] for r in records}
    old = read_captions(cap_path, required=SCENE_KEYS) if cap_path.exists() else []
    merged = sorted([r for r in old if r["image"] not in fresh] + list(records),
                    key=lambda r: (r["split"], r["image"]))
    write_captions(cap_path, merged)
    splits: dict[str, int] = {}
    for r in merged:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
    meta = {"classes": classes, "stuff": stuff, "things": things, "synonyms": synonyms,
            "eval_synonyms": eval_synonyms, "ignore_index": IGNORE_INDEX, "generator": generator,
            "split_offsets": split_offsets, "splits": splits}
    atomic_write_text(root / CLASSES_FILE, json.dumps(meta, indent=2) + "\n")


@dataclass
class SyntheticLayout:
    """The index of a synthetic-world folder: class metadata and one record per scene."""

    root: Path
    classes: list[str]
    stuff: list[str]
    things: list[str]
    synonyms: dict[str, list[str]]
    eval_synonyms: dict[str, list[str]]
    generator: dict
    records: list[dict]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> list[dict]:
        """Records of one split, sorted by image path."""
        return [r for r in self.records if r["split"] == name]


def load_synthetic(root: str | os.PathLike) -> SyntheticLayout:
    """Read classes.json and captions.jsonl of a folder written by ``SyntheticWorld.write``."""
    root = Path(root)
    meta_path, cap_path = root / CLASSES_FILE, root / CAPTIONS_FILE
    for p in (meta_path, cap_path):
        if not p.is_file():
            raise DataError(f"{p} not found (write a world there with `leafseg synth --out {root}`, or "
                            f"SyntheticWorld(...).write in Python)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        classes = list(meta["classes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: malformed class file ({exc}); re-write the folder.") from exc
    return SyntheticLayout(
        root=root, classes=classes, stuff=list(meta.get("stuff", [])), things=list(meta.get("things", [])),
        synonyms=meta.get("synonyms", {}), eval_synonyms=meta.get("eval_synonyms", {}),
        generator=meta.get("generator", {}), records=read_captions(cap_path, required=SCENE_KEYS),
        ignore_index=int(meta.get("ignore_index", IGNORE_INDEX)),
    )
