"""The synthetic world as a torch Dataset.

:class:`SyntheticDataset` serves samples either from a folder written by
:meth:`SyntheticWorld.write` (read with :func:`~leafseg.data.synthetic_layout.load_synthetic`)
or straight from a :class:`SyntheticWorld` (generated on first use and cached).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from leafseg.data.io import DataError, read_image, read_mask
from leafseg.data.synthetic import SyntheticWorld
from leafseg.data.synthetic_layout import IGNORE_INDEX, SyntheticLayout, load_synthetic

__all__ = ["IGNORE_INDEX", "SyntheticDataset", "SyntheticLayout", "load_synthetic", "to_sample"]


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
