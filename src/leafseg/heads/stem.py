"""A small convolutional stem that gives a ViT-based dense model local features.

A ViT mixes the whole image from its first block on, so its tokens describe the image as much as
their own patch. Hierarchical backbones (ResNet, Swin) hand a dense decoder a local stride-4 map
instead; ViT-Adapter's spatial prior module adds such a map to a plain ViT. ``ConvStem`` is that
module reduced to its first stage: three 3x3 convolutions (strides 2, 2, 1; receptive field 15 px),
GroupNorm and GELU, on the normalised pixels. Only GroupNorm's per-image statistics reach beyond
the receptive field.

    stem = ConvStem(32)
    local = stem(normalised_images)          # (B, 32, ceil(H/4), ceil(W/4))
    level = add_local(level, proj(local))    # added to a decoder's stride-4 map (proj: 1x1 conv)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of at least 8 channels, at most 32 groups (MaskFormer: 32 x 8 at width 256)."""
    return nn.GroupNorm(math.gcd(32, max(1, channels // 8)), channels)


class ConvStem(nn.Sequential):
    """(B, 3, H, W) normalised pixels -> (B, channels, ceil(H/4), ceil(W/4)) local features."""

    def __init__(self, channels: int):
        c = int(channels)
        if c <= 0:
            raise ValueError(f"stem channels must be positive, got {channels}")
        super().__init__(
            nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False), group_norm(c), nn.GELU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), group_norm(c), nn.GELU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), group_norm(c), nn.GELU())
        self.channels = c


def add_local(target: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``target`` (B, C, h, w) plus ``local`` (B, C, h', w'): zero-padded when the target is the
    larger by padding (a ViT pads to its patch multiple), bilinearly resized otherwise."""
    if local.shape[-2:] == target.shape[-2:]:
        return target + local
    dh, dw = target.shape[-2] - local.shape[-2], target.shape[-1] - local.shape[-1]
    if 0 <= dh < 4 and 0 <= dw < 4:
        return target + F.pad(local, (0, dw, 0, dh))
    return target + F.interpolate(local, size=target.shape[-2:], mode="bilinear", align_corners=False)
