"""Fixed square views of a segmentation dataset and their nearest-neighbour pairs (STEGO's training data).

    views = CropViews(build_dataset("coco_stuff27", root, "train"), size=224, five_crop=True)
    views[i]                    # {"image": (3, 224, 224), "mask": (224, 224) int64, "index": i}
    pairs = NeighbourPairs(views, table, seed=0)        # table (N, k) from leafseg.grouping.knn
    pairs[(i, epoch, draw)]     # views[i] plus "neighbour": the view of one of its k neighbours

A view is the image (or, with ``five_crop``, one of its five crops: the four corners and the centre, each
``crop_ratio`` of the image's height and width, STEGO's "five" crops) resized so its short side is ``size``
and centre-cropped to a square (:func:`~leafseg.data.transforms.center_crop`). Views are deterministic, so a
frozen encoder's k-NN table over them is computed once. The neighbour of a draw is chosen by a generator
seeded with (seed, epoch, draw): it does not depend on workers or on resuming.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from leafseg.data.transforms import center_crop

__all__ = ["CropViews", "NeighbourPairs", "five_crop_box"]

FIVE = 5


def five_crop_box(height: int, width: int, crop: int, ratio: float) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of crop ``crop`` (0-3: top-left, top-right, bottom-left,
    bottom-right; 4: centre) of an image of ``height`` x ``width``: ``ratio`` of each side, as torchvision's
    ``five_crop`` cuts them (STEGO's crops)."""
    ch, cw = max(1, int(height * ratio)), max(1, int(width * ratio))
    tops = (0, 0, height - ch, height - ch, int(round((height - ch) / 2)))
    lefts = (0, width - cw, 0, width - cw, int(round((width - cw) / 2)))
    return tops[crop], lefts[crop], ch, cw


class CropViews(Dataset):
    """Square views of ``dataset`` (items with ``image`` (3, H, W) in [0, 1] and ``mask`` (H, W)).

    Args:
        dataset: a :class:`~leafseg.data.datasets.SegmentationDataset` (or any dataset of such items; its
            ``samples`` (image path, mask path) pairs, when present, fingerprint it).
        size: the side of every view.
        five_crop: five views per image instead of one (item ``i`` is crop ``i % 5`` of image ``i // 5``).
        crop_ratio: the five crops' height and width as a fraction of the image's.
        indices: the dataset items to use (default: all), e.g. one client's share.
    """

    def __init__(self, dataset, size: int, *, five_crop: bool = False, crop_ratio: float = 0.5,
                 indices: Sequence[int] | None = None):
        if size < 1 or not 0.0 < crop_ratio <= 1.0:
            raise ValueError(f"need size >= 1 and crop_ratio in (0, 1], got {size} and {crop_ratio}")
        self.dataset, self.size = dataset, int(size)
        self.five_crop, self.crop_ratio = bool(five_crop), float(crop_ratio)
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.per_image = FIVE if self.five_crop else 1

    def __len__(self) -> int:
        return len(self.indices) * self.per_image

    def __getitem__(self, i: int) -> dict:
        image_index, crop = divmod(int(i), self.per_image)
        item = self.dataset[self.indices[image_index]]
        image, mask = item["image"], torch.as_tensor(item["mask"]).long()
        if self.five_crop:
            top, left, ch, cw = five_crop_box(*image.shape[-2:], crop, self.crop_ratio)
            image, mask = image[:, top:top + ch, left:left + cw], mask[top:top + ch, left:left + cw]
        image, mask = center_crop(image, mask, self.size)
        return {"image": image.contiguous(), "mask": mask.contiguous(), "index": int(i)}

    def fingerprint(self) -> str:
        """SHA-256 of what the views are made of: the image files (relative path and size, in order) or the
        item count, the crops and the size."""
        h = hashlib.sha256(f"{self.size} {self.five_crop} {self.crop_ratio}\n".encode())
        samples = getattr(self.dataset, "samples", None)
        root = str(getattr(self.dataset, "root", ""))
        for i in self.indices:
            if samples is None:
                h.update(f"{i}\n".encode())
                continue
            path = str(samples[i][0])
            size = os.stat(path).st_size if os.path.exists(path) else -1
            h.update(f"{os.path.relpath(path, root) if root else path} {size}\n".encode())
        return h.hexdigest()


class NeighbourPairs(Dataset):
    """Each view with one of its nearest neighbours, keyed by ResumableSampler keys (index, epoch, draw).

    ``pairs[(i, epoch, draw)]`` = ``views[i]`` plus ``neighbour`` (3, S, S): the view of ``table[i, j]`` for
    j drawn uniformly from the k columns by a generator seeded with (seed, epoch, draw). table: (N, k) int64.
    """

    def __init__(self, views: CropViews, table: torch.Tensor, seed: int = 0):
        if table.ndim != 2 or table.shape[0] != len(views):
            raise ValueError(f"the k-NN table has {tuple(table.shape)} rows for {len(views)} views")
        self.views, self.table, self.seed = views, table, int(seed)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key) -> dict:
        index, epoch, draw = key
        rng = np.random.default_rng([self.seed, int(epoch), int(draw)])
        neighbour = int(self.table[index, rng.integers(self.table.shape[1])])
        return {**self.views[index], "neighbour": self.views[neighbour]["image"]}
