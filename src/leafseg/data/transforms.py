"""Joint image + mask geometric transforms for training crops.

UniMatch V2's shared geometric part, used for labelled and unlabelled images alike:

1. rescale so the long side becomes ``randint(int(L * 0.5), int(L * 2.0))`` pixels (L the
   current long side, aspect kept; image bilinear, mask nearest, both with PIL as the authors);
2. pad right and bottom up to the crop size (image 0, mask ``fill``: 255 for labelled masks;
   for unlabelled images an all-zero map whose padding becomes 255 marks what to ignore);
3. a random crop of ``crop x crop`` pixels;
4. horizontal flip with probability 0.5.

Randomness comes from an explicit ``numpy.random.Generator``, so a sample's crop depends only
on the seed it is given, not on worker processes or call order. The work is single-threaded
PIL / numpy (fast in data-loader workers and on a busy CPU). :class:`SeededCrops` serves a
dataset's crops for a sampler that yields (index, epoch, draw) keys. :func:`center_crop` is STEGO's
fixed square view (its evaluation view, and the training view of the ``stego`` recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from leafseg.data.io import DataError, read_image


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 (exact for images read from 8-bit files)."""
    return (image.permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def to_uint8_mask(mask: torch.Tensor) -> np.ndarray:
    """(H, W) int labels in 0..255 -> (H, W) uint8; other values raise ValueError."""
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError(f"mask values must lie in 0..255, got {int(mask.min())}..{int(mask.max())}")
    return mask.to(torch.uint8).numpy()


def rescale_long_side(image: np.ndarray, mask: np.ndarray, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """image (H, W, 3) uint8, mask (H, W) uint8 -> both resized so max(H, W) == ``long_side``."""
    h, w = mask.shape
    if h > w:
        oh, ow = long_side, int(w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(h * long_side / w + 0.5)
    oh, ow = max(oh, 1), max(ow, 1)
    if (oh, ow) == (h, w):
        return image, mask
    img = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
    msk = np.asarray(Image.fromarray(mask).resize((ow, oh), Image.NEAREST))
    return img, msk


def pad_to(image: np.ndarray, mask: np.ndarray, size: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (H, W, 3) / (H, W) on the right and bottom to at least ``size`` (image 0, mask ``fill``)."""
    h, w = mask.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return image, mask
    return (np.pad(image, ((0, ph), (0, pw), (0, 0))),
            np.pad(mask, ((0, ph), (0, pw)), constant_values=fill))


@dataclass(frozen=True)
class RandomScaleCropFlip:
    """The shared geometric augmentation (see the module docstring).

    crop: output side S. scale_range: (0.5, 2.0) multipliers of the long side.
    hflip_p: flip probability. fill: mask value of padding.

    ``t(image (3, H, W) float in [0, 1], mask (H, W) int, rng)`` -> (image (3, S, S) float32,
    mask (S, S) int64).
    """

    crop: int
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip_p: float = 0.5
    fill: int = 255

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} sizes differ")
        img, msk = to_uint8_image(image), to_uint8_mask(mask)
        long = max(msk.shape)
        lo, hi = int(long * self.scale_range[0]), int(long * self.scale_range[1])
        img, msk = rescale_long_side(img, msk, int(rng.integers(lo, max(hi, lo) + 1)))
        img, msk = pad_to(img, msk, self.crop, self.fill)
        h, w = msk.shape
        y, x = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        img, msk = img[y:y + self.crop, x:x + self.crop], msk[y:y + self.crop, x:x + self.crop]
        if rng.random() < self.hflip_p:
            img, msk = img[:, ::-1], msk[:, ::-1]
        out = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        return out, torch.from_numpy(msk.astype(np.int64))


def padding_ignore_map(image: torch.Tensor, transform: RandomScaleCropFlip,
                       rng: np.random.Generator, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """An unlabelled image through ``transform``: (image (3, S, S), ignore (S, S) int64), where
    ``ignore`` is ``ignore_index`` on padding and 0 elsewhere."""
    zeros = torch.zeros(image.shape[-2:], dtype=torch.int64)
    out, ignore = RandomScaleCropFlip(transform.crop, transform.scale_range, transform.hflip_p,
                                      ignore_index)(image, zeros, rng)
    return out, ignore


class SeededCrops(Dataset):
    """Training crops of a dataset, keyed by ``leafseg.training.ResumableSampler`` keys (index, epoch, draw).

    Labelled: {"image": (3, S, S), "mask": (S, S) int64, 255 on padding}. Unlabelled (only the
    image file is read; masks are not needed): {"image": (3, S, S), "ignore": (S, S) int64, 255
    on padding}. The crop is seeded by (seed, stream, epoch, draw), so it does not depend on
    workers or on resuming.
    """

    def __init__(self, base: Dataset, transform: RandomScaleCropFlip, seed: int, stream: int, labeled: bool):
        self.base, self.transform, self.seed, self.stream, self.labeled = base, transform, seed, stream, labeled

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, epoch, draw = key
        rng = np.random.default_rng([self.seed, self.stream, epoch, draw])
        if self.labeled:
            item = self.base[index]
            image, mask = self.transform(item["image"], item["mask"], rng)
            return {"image": image, "mask": mask}
        image, ignore = padding_ignore_map(self.unlabeled_image(index), self.transform, rng)
        return {"image": image, "ignore": ignore}

    def unlabeled_image(self, index: int) -> torch.Tensor:
        """(3, H, W) in [0, 1]; with on_error="skip" an unreadable file gives way to the next."""
        n = len(self.base)
        for step in range(n):
            path = self.base.samples[(index + step) % n][0]
            try:
                return torch.from_numpy(read_image(path).transpose(2, 0, 1).copy()).float().div_(255.0)
            except DataError:
                if self.base.on_error != "skip":
                    raise
        raise DataError(f"{self.base.root}: no unlabelled image of {self.base.name} is readable")


def center_crop(image: Tensor, mask: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """STEGO's evaluation view: short side resized to ``side`` (image bilinear + antialias, mask
    nearest; the long side truncated like torchvision's Resize), then the central side x side square.

    image (3, H, W) float, mask (H, W) int -> image (3, side, side), mask (side, side)."""
    h, w = image.shape[-2:]
    size = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
    image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    top, left = int(round((size[0] - side) / 2)), int(round((size[1] - side) / 2))
    return image[:, top : top + side, left : left + side], mask[top : top + side, left : left + side]
