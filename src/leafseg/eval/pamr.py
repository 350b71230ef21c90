"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), as TCL and NACLIP use it.

Each pixel's class scores are replaced, ``iterations`` times, by a weighted average of the scores
of its neighbours: the 8 neighbours of a 3x3 stencil at every dilation in ``dilations``. The
weights come from the image alone: for neighbour j of pixel i,

    a_ij = softmax_j( mean_over_channels( -|x_i - x_j| / (1e-8 + 0.1 * sigma_i) ) )

where sigma_i is the per-channel standard deviation of the image over the pixel's 3x3 stencils
at all dilations (the centre counted once per dilation). Borders replicate the edge pixels.
The update is a convex combination, so probabilities stay probabilities.

This implementation never materialises the (B, C, P, H, W) neighbour tensor: the P = 8 x
len(dilations) shifted copies are accumulated one at a time, so memory is O(B (C + P) H W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PAMR", "pamr", "pamr_affinity"]

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(padded: Tensor, pad: int, dy: int, dx: int, height: int, width: int) -> Tensor:
    """The view of ``padded`` (N, C, H + 2 pad, W + 2 pad) whose pixel (y, x) is the original (y + dy, x + dx)."""
    return padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def _pad(x: Tensor, pad: int) -> Tensor:
    """Replicate padding by ``pad`` pixels on every side (any pad, even larger than the image)."""
    h, w = x.shape[-2:]
    rows = torch.arange(-pad, h + pad, device=x.device).clamp_(0, h - 1)
    cols = torch.arange(-pad, w + pad, device=x.device).clamp_(0, w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def _offsets(dilations: Sequence[int]) -> list[tuple[int, int, int]]:
    """(dilation, dy, dx) of every neighbour, dilation-major."""
    return [(d, dy * d, dx * d) for d in dilations for dy, dx in _NEIGHBOURS]


def pamr_affinity(image: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)) -> Tensor:
    """Neighbour weights from the image.

    image: (B, K, H, W) float (any scale; each channel is divided by its local deviation).
    Returns (B, P, H, W), P = 8 * len(dilations), non-negative and summing to 1 over P.
    """
    x = image.float()
    b, k, h, w = x.shape
    n = 9 * len(dilations)
    total, total_sq = x * len(dilations), x.square() * len(dilations)  # the centres
    padded = {d: _pad(x, d) for d in sorted(set(dilations))}
    for d, dy, dx in _offsets(dilations):
        nb = _shifted(padded[d], d, dy, dx, h, w)
        total = total + nb
        total_sq = total_sq + nb.square()
    var = (total_sq - total.square() / n) / (n - 1)  # unbiased, like torch.std
    scale = 1e-8 + 0.1 * var.clamp_min(0).sqrt()  # (B, K, H, W)
    logits = torch.empty(b, 8 * len(dilations), h, w, device=x.device, dtype=x.dtype)
    for p, (d, dy, dx) in enumerate(_offsets(dilations)):
        nb = _shifted(padded[d], d, dy, dx, h, w)
        logits[:, p] = (-(x - nb).abs() / scale).mean(1)
    return logits.softmax(1)


def pamr(
    image: Tensor, masks: Tensor, iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)
) -> Tensor:
    """Refine class scores with image-adaptive neighbour averaging.

    Args:
        image: (B, K, H, W) the image (e.g. RGB in [0, 1]).
        masks: (B, C, h, w) scores or probabilities; resized bilinearly to (H, W) if needed.
        iterations: number of averaging steps (TCL / NACLIP: 10).
        dilations: stencil dilations (TCL / NACLIP: 1, 2, 4, 8, 12, 24).

    Returns:
        (B, C, H, W) in the masks' dtype: every pixel a convex combination of its neighbours' scores.
    """
    if image.ndim != 4 or masks.ndim != 4 or image.shape[0] != masks.shape[0]:
        raise ValueError(f"image (B, K, H, W) and masks (B, C, h, w) expected, got {tuple(image.shape)} "
                         f"and {tuple(masks.shape)}")
    h, w = image.shape[-2:]
    out = masks.float()
    if tuple(out.shape[-2:]) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    weights = pamr_affinity(image, dilations)  # (B, P, H, W)
    offsets = _offsets(dilations)
    for _ in range(iterations):
        padded = {d: _pad(out, d) for d in sorted(set(dilations))}
        acc = torch.zeros_like(out)
        for p, (d, dy, dx) in enumerate(offsets):
            acc.addcmul_(weights[:, p : p + 1], _shifted(padded[d], d, dy, dx, h, w))
        out = acc
    return out.to(masks.dtype)


class PAMR(nn.Module):
    """Module form of :func:`pamr`: ``PAMR(iterations, dilations)(image, masks)``."""

    def __init__(self, iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)):
        super().__init__()
        if iterations < 1 or not dilations or min(dilations) < 1:
            raise ValueError(f"need iterations >= 1 and positive dilations, got {iterations}, {dilations}")
        self.iterations, self.dilations = int(iterations), tuple(int(d) for d in dilations)

    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        """image (B, K, H, W), masks (B, C, h, w) -> refined (B, C, H, W)."""
        return pamr(image, masks, self.iterations, self.dilations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, dilations={self.dilations}"
