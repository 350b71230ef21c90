"""Dense prediction at the original image resolution: whole-image or sliding-window.

The window grid follows mmsegmentation's ``slide_inference``: along each axis
``grids = max(size - crop + stride - 1, 0) // stride + 1`` windows start every
``stride`` pixels, the last one is shifted back to end on the border, and a
crop larger than the image is clipped to it. Overlapping window logits are
summed and divided by how many windows covered each pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SlidingWindowPredictor", "resized_shape", "slide_windows"]

Window = tuple[int, int, int, int]  # (y1, y2, x1, x2), end-exclusive


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def slide_windows(
    height: int, width: int, crop: int | tuple[int, int], stride: int | tuple[int, int]
) -> list[Window]:
    """The sliding-window grid over a (height, width) image.

    Args:
        height, width: image size in pixels.
        crop: window size, int or (crop_h, crop_w).
        stride: step between window starts, int or (stride_h, stride_w); must not
            exceed the crop, so that every pixel is covered.

    Returns:
        Row-major list of (y1, y2, x1, x2) windows, all of size
        (min(crop_h, height), min(crop_w, width)), inside the image, covering it.
    """
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride")
    if sh > ch or sw > cw:
        raise ValueError(f"stride {(sh, sw)} larger than crop {(ch, cw)} would leave pixels uncovered")
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for i in range(rows):
        y2 = min(i * sh + ch, height)
        y1 = max(y2 - ch, 0)
        for j in range(cols):
            x2 = min(j * sw + cw, width)
            x1 = max(x2 - cw, 0)
            windows.append((y1, y2, x1, x2))
    return windows


def resized_shape(
    height: int, width: int, short_side: int | None = None, size_multiple: int | None = None
) -> tuple[int, int]:
    """Size the model sees: short side scaled to ``short_side`` (aspect kept, rounded
    to nearest), then each side rounded up to a multiple of ``size_multiple``."""
    if short_side is not None:
        scale = short_side / min(height, width)
        height, width = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
    if size_multiple is not None:
        height = math.ceil(height / size_multiple) * size_multiple
        width = math.ceil(width / size_multiple) * size_multiple
    return height, width


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (N, C, h, w) to (N, C, *size); identity when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SlidingWindowPredictor:
    """Turns a dense model into a full-resolution segmenter.

    Args:
        model_fn: ``model_fn(images (N, 3, h, w)) -> logits (N, C, h', w')``; any output
            resolution, bilinearly upsampled to the input size.
        num_classes: C, checked against the model's output channels.
        mode: ``"whole"`` (one forward of the resized image) or ``"slide"``.
        crop: slide window size, int or (h, w).
        stride: slide step, int or (h, w), not larger than ``crop``.
        short_side: if set, images are first resized so their short side has this
            length (aspect ratio kept).
        size_multiple: if set, the resized height and width are rounded up to a
            multiple of it (e.g. 14 for a ViT-*/14 in whole mode); the image is
            resized to that size, not padded.
        batch_windows: crops per ``model_fn`` call in slide mode; windows are taken
            for all images of the batch together, so a call holds
            ``max(1, batch_windows // B)`` windows of each of the B images.

    Calling the predictor on images (B, 3, H, W) returns logits (B, C, H, W) at the
    original resolution, in float32 (or the model's dtype if wider), computed
    under ``torch.no_grad``.
    """

    def __init__(
        self,
        model_fn: Callable[[Tensor], Tensor],
        num_classes: int,
        mode: str = "whole",
        crop: int | tuple[int, int] = 448,
        stride: int | tuple[int, int] = 224,
        short_side: int | None = None,
        size_multiple: int | None = None,
        batch_windows: int = 8,
    ):
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if batch_windows < 1:
            raise ValueError(f"batch_windows must be positive, got {batch_windows}")
        self.crop = _pair(crop, "crop")
        self.stride = _pair(stride, "stride")
        if mode == "slide" and (self.stride[0] > self.crop[0] or self.stride[1] > self.crop[1]):
            raise ValueError(
                f"stride {self.stride} larger than crop {self.crop} would leave pixels uncovered"
            )
        self.model_fn = model_fn
        self.num_classes = num_classes
        self.mode = mode
        self.short_side = short_side
        self.size_multiple = size_multiple
        self.batch_windows = batch_windows

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Logits (B, C, H, W) for images (B, 3, H, W) (any float dtype, any device)."""
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        size = resized_shape(height, width, self.short_side, self.size_multiple)
        resized = _resize(images, size)
        if self.mode == "whole":
            logits = self._forward(resized)
        else:
            logits = self._slide(resized)
        return _resize(logits, (height, width))

    def _forward(self, images: Tensor) -> Tensor:
        """Model logits for (N, 3, h, w) images, upsampled to (N, C, h, w)."""
        out = self.model_fn(images)
        if out.ndim != 4 or out.shape[0] != images.shape[0] or out.shape[1] != self.num_classes:
            raise ValueError(
                f"model_fn returned shape {tuple(out.shape)} for input {tuple(images.shape)}; "
                f"expected ({images.shape[0]}, {self.num_classes}, h', w')"
            )
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        return _resize(out, tuple(images.shape[-2:]))

    def _slide(self, images: Tensor) -> Tensor:
        """Window-averaged logits (B, C, h, w) for resized images (B, 3, h, w)."""
        b, _, h, w = images.shape
        windows = slide_windows(h, w, self.crop, self.stride)
        per_call = max(1, self.batch_windows // b)
        total: Tensor | None = None
        count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=images.device)
        for start in range(0, len(windows), per_call):
            group = windows[start : start + per_call]
            # (G * B, 3, wh, ww), window-major.
            crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group])
            logits = self._forward(crops)
            if total is None:
                total = logits.new_zeros(b, self.num_classes, h, w)
            for g, (y1, y2, x1, x2) in enumerate(group):
                total[:, :, y1:y2, x1:x2] += logits[g * b : (g + 1) * b]
                count[:, :, y1:y2, x1:x2] += 1
        return total / count.to(total.dtype)
