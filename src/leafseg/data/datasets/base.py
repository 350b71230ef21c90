"""A benchmark split as a torch Dataset: (image, mask) file pairs, a label encoding, class names.

Bad samples (unreadable file, missing mask, mask of another size, labels outside the class
set) are handled by the explicit ``on_error`` choice:

- ``"stop"`` (default): ``ds[i]`` raises a :class:`~leafseg.data.io.DataError` naming the file.
- ``"skip"``: ``ds[i]`` never raises for a bad sample. It records the message in
  ``ds.skipped`` and serves the next good sample (wrapping around) as a stand-in, so a
  training epoch keeps its length and its batch sizes. Every item then carries a
  ``"skipped"`` string: ``""`` for a good sample, else the message of the bad sample ``i``
  it stands in for (so one pass reports each bad sample exactly once). A stand-in's own
  sample is also served at its own index, so a loop that must see each good sample once
  (evaluation) drops items whose ``"skipped"`` is non-empty;
  :meth:`SegmentationDataset.iter_valid` does exactly that. Messages found in
  DataLoader worker processes reach ``ds.skipped`` through
  :meth:`SegmentationDataset.collect_skipped` (called on each batch; ``iter_valid`` calls it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from leafseg.data.datasets.labels import IGNORE_INDEX, describe_values, map_labels
from leafseg.data.io import DataError, read_image, read_mask

LabelMap = np.ndarray | Mapping[str, np.ndarray] | None
ON_ERROR = ("stop", "skip")


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """image (H, W, 3) uint8 -> float32 (3, H, W) in [0, 1]; mask (H, W) -> int64 (H, W)."""
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
    return img, torch.from_numpy(mask.astype(np.int64))


class SegmentationDataset(Dataset):
    """Samples of one split of a segmentation benchmark (see the module docstring for ``on_error``).

    ``ds[i]`` is a dict: ``image`` float32 (3, H, W) in [0, 1], ``mask`` int64 (H, W) with
    values in 0..num_classes-1 or ``ignore_index``, ``name`` (the sample's relative id),
    ``image_path``, ``mask_path`` (str), and in skip mode ``skipped`` (str). ``transform``,
    if given, maps that dict to a dict (e.g. a joint image+mask augmentation).

    samples: (image path, mask path) pairs. label_map: a (256,) uint8 table from stored
    mask values to labels, or ``{mask file name ending: table}`` when one split mixes
    encodings (first matching ending wins), or None for stored value = label.
    name_root / name_suffix: a sample's name is its image path relative to ``name_root``
    (else to ``root``), without the extension and without ``name_suffix``.
    unpaired_masks: mask files of the split that have no image (reported by ``data check``).
    """

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, str | os.PathLike]], classes: Sequence[str], *,
                 name: str = "custom", root: str | os.PathLike = ".", split: str = "custom",
                 label_map: LabelMap = None, has_background: bool = False, ignore_index: int = IGNORE_INDEX,
                 on_error: str = "stop", transform: Callable[[dict], dict] | None = None,
                 name_root: str | os.PathLike | None = None, name_suffix: str = "",
                 unpaired_masks: Sequence[str | os.PathLike] = ()):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.classes, self.name, self.root, self.split = tuple(classes), name, Path(root), split
        self.num_classes, self.ignore_index, self.has_background = len(self.classes), int(ignore_index), has_background
        self.label_map, self.on_error, self.transform = label_map, on_error, transform
        self.name_root = Path(name_root) if name_root is not None else self.root
        self.name_suffix = name_suffix
        self.unpaired_masks = [Path(p) for p in unpaired_masks]
        self.skipped: list[str] = []
        self._seen: set[str] = set()  # the messages in skipped, for constant-time de-duplication
        self._bad: dict[int, str] = {}  # index -> message, for samples found bad in this process

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"SegmentationDataset(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={self.num_classes}, root={str(self.root)!r}, on_error={self.on_error!r})")

    def sample_name(self, i: int) -> str:
        """The relative id of sample ``i`` (e.g. ``2007_000033`` or ``frankfurt/frankfurt_000000_000294``)."""
        path = self.samples[i][0]
        for base in (self.name_root, self.root):
            try:
                rel = path.relative_to(base)
                break
            except ValueError:
                continue
        else:
            rel = Path(path.name)
        text = rel.with_suffix("").as_posix()
        return text[: -len(self.name_suffix)] if self.name_suffix and text.endswith(self.name_suffix) else text

    def lut_for(self, mask_path: str | os.PathLike) -> np.ndarray | None:
        """The (256,) uint8 table that decodes ``mask_path`` (None: stored value = label)."""
        if self.label_map is None or isinstance(self.label_map, np.ndarray):
            return self.label_map
        name = Path(mask_path).name
        for ending, lut in self.label_map.items():
            if name.endswith(ending):
                return lut
        raise DataError(f"{mask_path}: no label encoding for this file name; expected a name ending in "
                        f"{', '.join(self.label_map)}.")

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and decode sample ``i``: image (H, W, 3) uint8, labels (H, W) uint8. Raises DataError."""
        image_path, mask_path = self.samples[i]
        image = read_image(image_path)
        raw = read_mask(mask_path, expected_size=image.shape[:2])
        labels, bad = map_labels(raw, self.lut_for(mask_path), self.num_classes, self.ignore_index)
        if bad:
            raise DataError(
                f"{mask_path}: {sum(bad.values())} pixels have stored values outside the {self.num_classes} "
                f"classes of {self.name} (0..{self.num_classes - 1}, {self.ignore_index} = ignore, after the "
                f"dataset's label mapping): {describe_values(bad)}. The file is corrupt or belongs to another "
                f"dataset or label encoding.")
        return image, labels

    def _item(self, i: int, image: np.ndarray, labels: np.ndarray) -> dict:
        img, mask = to_tensors(image, labels)
        image_path, mask_path = self.samples[i]
        return {"image": img, "mask": mask, "name": self.sample_name(i),
                "image_path": str(image_path), "mask_path": str(mask_path)}

    def _record(self, message: str) -> bool:
        """Add ``message`` to ``skipped`` unless it is already there; True when it was new."""
        if message in self._seen:
            return False
        self._seen.add(message)
        self.skipped.append(message)
        return True

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i %= n
        if self.on_error == "stop":
            item = self._item(i, *self.load(i))
            return self.transform(item) if self.transform is not None else item
        for step in range(n):
            j = (i + step) % n
            if j not in self._bad:
                try:
                    item = self._item(j, *self.load(j))
                except DataError as err:
                    self._bad[j] = " ".join(str(err).split("\n"))
                else:  # the stand-in carries only sample i's message: the others are reported at their own index
                    item["skipped"] = self._bad[i] if step else ""
                    return self.transform(item) if self.transform is not None else item
            self._record(self._bad[j])
        raise DataError(f"{self.root}: all {n} samples of {self.name} split {self.split!r} are bad; "
                        f"the first: {self._bad[0]}")

    def collect_skipped(self, batch: dict) -> int:
        """Add the messages a (batched or single) item carries to ``skipped``; returns how many were new.

        Needed when items come from DataLoader worker processes, whose ``skipped`` lists are their own.
        """
        carried = batch.get("skipped", "")
        texts = [carried] if isinstance(carried, str) else list(carried)
        return sum(self._record(m) for text in texts for m in text.split("\n") if m)

    def iter_valid(self, num_workers: int = 0) -> Iterator[dict]:
        """Yield every good sample exactly once, in order (unbatched items, any image size).

        In skip mode bad samples are dropped and their messages land in ``skipped``; in stop
        mode the first bad sample raises DataError.
        """
        loader = DataLoader(self, batch_size=None, num_workers=num_workers)
        for item in loader:
            if self.on_error == "skip":
                self.collect_skipped(item)
                if item["skipped"]:
                    continue
            yield item
