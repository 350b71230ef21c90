"""The synthetic world on disk and as a torch Dataset.

:func:`write_synthetic` writes the layout described in :mod:`leafseg.data.synthetic`;
:func:`load_synthetic` reads its index back; :class:`SyntheticDataset` serves samples
either from such a folder or straight from a :class:`SyntheticWorld` (generated on
first use and cached).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from leafseg.data.captions import read_captions, write_captions
from leafseg.data.io import DataError, read_image, read_mask, write_image, write_mask
from leafseg.data.synthetic import SPLIT_OFFSETS, SyntheticWorld
from leafseg.files import atomic_write_text

IGNORE_INDEX = 255


SCENE_KEYS = ("image", "mask", "caption", "split")


def write_synthetic(world: SyntheticWorld, root: str | os.PathLike, n: int, split: str = "train",
                    start: int = 0) -> Path:
    """Write scenes ``start .. start+n-1`` of ``split`` under ``root``; returns ``root``.

    Writing more splits (or more scenes) into the same root adds to captions.jsonl;
    rewriting a scene replaces its record. A root holding scenes from different
    generator settings is refused.
    """
    root = Path(root)
    meta_path, cap_path = root / "classes.json", root / "captions.jsonl"
    settings = world.settings()
    if meta_path.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8")).get("generator")
        if old != settings:
            raise ValueError(f"{root} holds scenes from other generator settings ({old}); "
                             f"write these ({settings}) to another folder.")
    new = []
    for k in range(start, start + n):
        scene = world.scene(world.index(split, k))
        image_rel, mask_rel = f"images/{split}/{scene.name}.png", f"masks/{split}/{scene.name}.png"
        write_image(root / image_rel, scene.image)
        write_mask(root / mask_rel, scene.mask)
        new.append({"image": image_rel, "mask": mask_rel, "caption": scene.caption, "split": split,
                    "classes": list(scene.classes_present)})
    fresh = {r["image"] for r in new}
    records = [r for r in (read_captions(cap_path, required=SCENE_KEYS) if cap_path.exists() else [])
               if r["image"] not in fresh]
    records = sorted(records + new, key=lambda r: (r["split"], r["image"]))
    write_captions(cap_path, records)
    splits: dict[str, int] = {}
    for r in records:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
    meta = {
        "classes": list(world.classes), "stuff": list(world.stuff), "things": list(world.things),
        "synonyms": {c: list(s) for c, s in world.synonyms.items()},
        "eval_synonyms": {c: list(s) for c, s in world.eval_synonyms.items()},
        "ignore_index": IGNORE_INDEX, "generator": settings, "split_offsets": SPLIT_OFFSETS,
        "splits": splits,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return root


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
    """Read classes.json and captions.jsonl of a folder written by :func:`write_synthetic`."""
    root = Path(root)
    meta_path, cap_path = root / "classes.json", root / "captions.jsonl"
    for p in (meta_path, cap_path):
        if not p.is_file():
            raise DataError(f"{p}: not found; {root} is not a synthetic-world folder "
                            f"(create one with SyntheticWorld(...).write(root, n)).")
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


def to_sample(image: np.ndarray, mask: np.ndarray, caption: str, name: str) -> dict:
    """Tensors from arrays: image (H, W, 3) uint8 -> float32 (3, H, W) in [0, 1]; mask (H, W) -> int64."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0),
        "mask": torch.from_numpy(mask.astype(np.int64)),
        "caption": caption,
        "name": name,
    }


class SyntheticDataset(Dataset):
    """Samples of the synthetic world, from a folder or generated from a world.

    Each item is a dict: image float32 (3, H, W) in [0, 1], mask int64 (H, W) class ids
    (255 = ignore), caption str, name str. ``transform``, if given, maps that dict to a
    dict (e.g. a joint image+mask augmentation).

    source: a folder written by :meth:`SyntheticWorld.write`, or a SyntheticWorld.
    split: "train", "val" or "test". n: number of samples (a folder: its first n of the
    split, all by default; a world: required). start: first scene number (worlds only).
    """

    def __init__(self, source: str | os.PathLike | SyntheticWorld, split: str = "train", n: int | None = None,
                 transform: Callable[[dict], dict] | None = None, start: int = 0, cache: bool = True):
        self.split, self.transform = split, transform
        self._cache: dict[int, tuple] | None = {} if cache else None
        if isinstance(source, SyntheticWorld):
            if n is None:
                raise ValueError("SyntheticDataset over a SyntheticWorld needs n, the number of scenes")
            self.world, self.layout = source, None
            self.indices = [source.index(split, start + k) for k in range(n)]
            self.num_classes, self.classes = source.num_classes, list(source.classes)
        else:
            self.world, self.layout = None, load_synthetic(source)
            records = self.layout.split(split)
            if n is not None and n > len(records):
                raise DataError(f"{self.layout.root}: split {split!r} has {len(records)} scenes, {n} requested.")
            if not records:
                raise DataError(f"{self.layout.root}: split {split!r} has no scenes.")
            self.records = records[:n] if n is not None else records
            self.num_classes, self.classes = self.layout.num_classes, list(self.layout.classes)

    def __len__(self) -> int:
        return len(self.indices) if self.world is not None else len(self.records)

    def _load(self, k: int) -> tuple[np.ndarray, np.ndarray, str, str]:
        if self.world is not None:
            scene = self.world.scene(self.indices[k])
            return scene.image, scene.mask, scene.caption, scene.name
        rec, root = self.records[k], self.layout.root
        image = read_image(root / rec["image"])
        mask = read_mask(root / rec["mask"], num_classes=self.num_classes,
                         ignore_index=self.layout.ignore_index, expected_size=image.shape[:2])
        return image, mask, rec["caption"], Path(rec["image"]).stem

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} samples")
        k = k % len(self)
        if self._cache is not None and k in self._cache:
            item = self._cache[k]
        else:
            item = self._load(k)
            if self._cache is not None:
                self._cache[k] = item
        sample = to_sample(*item)
        return self.transform(sample) if self.transform is not None else sample
