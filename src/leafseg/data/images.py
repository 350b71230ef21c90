"""Images without their masks: the training data of label-free pretraining.

    views = ImageViews.of(build_dataset("synthetic", root, "train"), size=64)
    views[i]            # {"image": (3, 64, 64) float in [0, 1], "index": i}; no "mask" key
    views[(i, epoch, draw)]   # the same item, keyed as ResumableSampler yields

Only the image paths of the dataset's ``samples`` are kept; the mask paths are dropped when the views are
built, so nothing downstream can read a label. A view is the image resized (bilinear, antialiased) so its
short side is ``size`` and centre-cropped to a square, as :func:`leafseg.data.transforms.center_crop` cuts
the image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from leafseg.data.io import read_image

__all__ = ["ImageViews", "square_view"]


def square_view(image: torch.Tensor, side: int) -> torch.Tensor:
    """image (3, H, W) float -> (3, side, side): short side resized to ``side`` (bilinear + antialias, the
    long side truncated), then the central square."""
    h, w = image.shape[-2:]
    size = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
    if size != (h, w):
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0]
    top, left = int(round((size[0] - side) / 2)), int(round((size[1] - side) / 2))
    return image[:, top: top + side, left: left + side]


class ImageViews(Dataset):
    """Square views of image files. paths: the image files; size: the side of every view; cache: keep the
    decoded views in memory (uint8) after their first read."""

    def __init__(self, paths: Sequence[str | os.PathLike], size: int, *, cache: bool = True):
        if size < 1:
            raise ValueError(f"need size >= 1, got {size}")
        if not paths:
            raise ValueError("no images")
        self.paths = [Path(p) for p in paths]
        self.size = int(size)
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    @classmethod
    def of(cls, dataset, size: int, *, cache: bool = True) -> ImageViews:
        """The images of a segmentation dataset (its ``samples``: (image, mask) path pairs), masks dropped."""
        samples = getattr(dataset, "samples", None)
        if samples is None:
            raise ValueError(f"{type(dataset).__name__} lists no samples (image, mask) paths to take images from")
        return cls([image for image, _ in samples], size, cache=cache)

    def __len__(self) -> int:
        return len(self.paths)

    def _view(self, i: int) -> torch.Tensor:
        """View ``i`` as uint8 (3, size, size)."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        pixels = torch.from_numpy(read_image(self.paths[i])).permute(2, 0, 1).float()
        view = square_view(pixels, self.size).round().clamp(0, 255).to(torch.uint8).contiguous()
        if self._cache is not None:
            self._cache[i] = view
        return view

    def __getitem__(self, key) -> dict:
        i = int(key[0] if isinstance(key, tuple) else key)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return {"image": self._view(i).float().div(255.0), "index": i}
