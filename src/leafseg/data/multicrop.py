"""DINO's multi-crop augmentation of a batch, on the batch's device (kornia).

Every image of the batch gives ``global_crops`` large views and ``local_crops`` small ones (Caron et al.,
"Emerging Properties in Self-Supervised Vision Transformers", 2021, section 3.1 and appendix):

* each view: a random resized crop (area ``global_scale`` / ``local_scale`` of the image, aspect 3/4 to 4/3)
  resized bilinearly to ``global_size`` / ``local_size``, a horizontal flip with probability 0.5, colour
  jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with probability 0.8, grayscale with
  probability 0.2;
* Gaussian blur (sigma drawn from ``blur_sigma``) with probability 1.0 on the first global view, 0.1 on the
  second, 0.5 on local views; solarization (threshold 0.5) with probability 0.2 on the second global view.

Each image draws its own parameters in each view. Draws come from torch's global generator (kornia's), so
the checkpointed RNG states replay the views exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MultiCrop"]


class MultiCrop(nn.Module):
    """forward(images (B, 3, H, W) in [0, 1]) -> list of ``global_crops + local_crops`` views, the global ones
    first: each (B, 3, global_size, global_size) or (B, 3, local_size, local_size), in [0, 1].

    ``jitter``: the colour jitter's (brightness, contrast, saturation, hue); ``jitter_p``, ``grayscale_p``:
    their probabilities; ``blur_p``: (first global, second global, local) blur probabilities;
    ``solarize_p``: the second global view's solarization probability.
    """

    def __init__(self, global_size: int, local_size: int, *, global_crops: int = 2, local_crops: int = 6,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1), jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5), solarize_p: float = 0.2):
        super().__init__()
        import kornia.augmentation as K

        if global_crops < 1 or local_crops < 0:
            raise ValueError(f"need global_crops >= 1 and local_crops >= 0, got {global_crops}, {local_crops}")
        self.global_crops, self.local_crops = int(global_crops), int(local_crops)
        kernel = 2 * math.ceil(3 * blur_sigma[1]) + 1

        def view(size: int, scale, blur: float, solarize: float) -> nn.Sequential:
            steps = [K.RandomResizedCrop((size, size), scale=tuple(scale), ratio=(3 / 4, 4 / 3)),
                     K.RandomHorizontalFlip(p=0.5),
                     K.ColorJitter(*jitter, p=jitter_p),
                     K.RandomGrayscale(p=grayscale_p)]
            if blur > 0:
                steps.append(K.RandomGaussianBlur((kernel, kernel), sigma=tuple(blur_sigma), p=blur))
            if solarize > 0:
                steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize))
            return nn.Sequential(*steps)

        first, second, local = blur_p
        self.global_views = nn.ModuleList(
            [view(global_size, global_scale, first if g == 0 else second, solarize_p if g == 1 else 0.0)
             for g in range(self.global_crops)])
        self.local_view = view(local_size, local_scale, local, 0.0) if self.local_crops else None

    @property
    def num_views(self) -> int:
        return self.global_crops + self.local_crops

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float()
        views = [v(x) for v in self.global_views]
        views += [self.local_view(x) for _ in range(self.local_crops)]
        return [v.clamp_(0.0, 1.0) for v in views]
