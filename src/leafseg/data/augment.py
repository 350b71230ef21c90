"""Augmentation batched on the model's device (kornia): UniMatch V2's strong view and CutMix, and the
random resized crop + flip of contrastive image-text pretraining.

UniMatch V2's strong view, drawn independently per image and per view:
colour jitter (brightness 0.5, contrast 0.5, saturation 0.5, hue 0.25) with p 0.8; grayscale
with p 0.2; Gaussian blur with sigma ~ U(0.1, 2.0) with p 0.5; then CutMix with p 0.5, a box
of area U(0.02, 0.4) of the image and aspect ratio U(0.3, 1/0.3), pasting the box from a
partner image of the batch. The teacher's pseudo-labels, confidences and ignore masks are
mixed with the same boxes and partners (:func:`mix`). Partners come from a random cyclic
permutation of the batch (every image gets another image when the batch has two or more),
rather than the authors' batch reversal.

Random draws use torch's generator of the images' device (kornia draws from torch's global
generator), so a checkpoint of the torch RNG states replays them exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class StrongAugment(nn.Module):
    """Photometric strong augmentation of a batch: (B, 3, H, W) in [0, 1] -> same shape, in [0, 1].

    Every image draws its own jitter factors, grayscale and blur decisions and blur sigma.
    """

    def __init__(self, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5, hue: float = 0.25,
                 jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma: tuple[float, float] = (0.1, 2.0), blur_kernel: int | None = None):
        super().__init__()
        import kornia.augmentation as K

        kernel = blur_kernel or 2 * math.ceil(3 * blur_sigma[1]) + 1
        self.jitter = K.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p)
        self.gray = K.RandomGrayscale(p=grayscale_p)
        self.blur = K.RandomGaussianBlur((kernel, kernel), sigma=blur_sigma, p=blur_p)
        self.kernel = kernel

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = self.jitter(images.float())
        x = self.gray(x)
        if min(x.shape[-2:]) > self.kernel // 2:  # reflect padding needs the image wider than the radius
            x = self.blur(x)
        return x.clamp_(0.0, 1.0)


class RandomResizedCropFlip(nn.Module):
    """Contrastive pretraining's view of a batch: each image draws its own crop, of ``scale`` (a range of
    fractions of the image area) and aspect ``ratio`` (a range of width / height), resized bilinearly to
    ``size`` x ``size``, then a horizontal flip with probability ``flip``.

    forward(images (B, 3, H, W) in [0, 1]) -> (B, 3, size, size) in [0, 1]. Draws from torch's global
    generator (kornia's), so checkpointed RNG states replay the views.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.9, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5):
        super().__init__()
        import kornia.augmentation as K

        self.crop = K.RandomResizedCrop((int(size), int(size)), scale=tuple(scale), ratio=tuple(ratio))
        self.flip = K.RandomHorizontalFlip(p=float(flip)) if flip > 0 else None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = self.crop(images.float())
        if self.flip is not None:
            x = self.flip(x)
        return x.clamp_(0.0, 1.0)


def cutmix_boxes(batch: int, height: int, width: int, *, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3), device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None, tries: int = 32) -> torch.Tensor:
    """CutMix boxes: (B, H, W) bool, True inside each image's box (all False where not applied).

    As the authors: with probability p, an area s = U(area) * H * W; then, until the box fits,
    an aspect ratio r = U(ratio), box width int(sqrt(s / r)), height int(sqrt(s * r)) and a top-left
    corner uniform in [0, W] x [0, H]. ``tries`` candidates are drawn at once per image and the
    first that fits is used (the last one, clipped, if none fits).
    """
    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, device=device, generator=generator)

    applied = torch.rand(batch, device=device, generator=generator) < p
    s = u(area[0], area[1], batch, 1) * height * width
    r = u(ratio[0], ratio[1], batch, tries)
    bw, bh = torch.sqrt(s / r).floor().long(), torch.sqrt(s * r).floor().long()
    x = torch.randint(0, width + 1, (batch, tries), device=device, generator=generator)
    y = torch.randint(0, height + 1, (batch, tries), device=device, generator=generator)
    fits = (x + bw <= width) & (y + bh <= height)
    pick = torch.where(fits.any(1), fits.float().argmax(1), torch.full_like(fits[:, 0], tries - 1, dtype=torch.long))
    rows = torch.arange(batch, device=device)
    x0, y0, w0, h0 = x[rows, pick], y[rows, pick], bw[rows, pick], bh[rows, pick]
    x0, y0 = torch.minimum(x0, (width - w0).clamp_min(0)), torch.minimum(y0, (height - h0).clamp_min(0))
    yy = torch.arange(height, device=device).view(1, height, 1)
    xx = torch.arange(width, device=device).view(1, 1, width)
    inside = ((yy >= y0.view(-1, 1, 1)) & (yy < (y0 + h0).view(-1, 1, 1))
              & (xx >= x0.view(-1, 1, 1)) & (xx < (x0 + w0).view(-1, 1, 1)))
    return inside & applied.view(-1, 1, 1)


def cutmix_partners(batch: int, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) int64: image i takes its box content from image ``partners[i]``; a random cyclic
    permutation, so ``partners[i] != i`` whenever B > 1."""
    order = torch.randperm(batch, device=device, generator=generator)
    partners = torch.empty_like(order)
    partners[order] = order.roll(-1)
    return partners


def mix(x: torch.Tensor, boxes: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """Paste each partner's box content: x (B, H, W) or (B, C, H, W); boxes (B, H, W) bool;
    partners (B,). Returns a new tensor of x's shape."""
    box = boxes if x.ndim == 3 else boxes.unsqueeze(1)
    return torch.where(box, x[partners], x)
