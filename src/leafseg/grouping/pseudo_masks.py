"""The pseudo-mask generator of S-Seg (section 3.4): backbone features -> K regions per image -> label maps.

An image encoder turns each image into a grid of patch tokens; the tokens of every image are clustered
with k-means (all images of a batch at once, see :mod:`leafseg.grouping.kmeans`); each token takes its
cluster index, and the token-level label map is resized to the image. The regions are class-agnostic:
region ``j`` of one image has nothing to do with region ``j`` of another.

The same generator with :class:`PixelFeatures` as the encoder is the paper's "pixel K-means" baseline
(RGB values averaged over 8x8 cells, i.e. clustering at 1/8 resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from leafseg.errors import ConfigError
from leafseg.grouping.kmeans import batched_kmeans

UPSAMPLE_MODES = ("nearest", "bilinear")


@dataclass
class PixelOutput:
    """Same fields as the backbones' output: maps (list of (B, 3, h, w)), cls (list of (B, 3))."""

    maps: list
    cls: list


class PixelFeatures(nn.Module):
    """A parameter-free "encoder" whose patch features are mean RGB values of ``cell x cell`` cells.

    It follows the backbone contract (``patch_size``, ``features(images, layers, kind)``) so that the
    pseudo-mask generator, the CLI and the benchmarks treat it like any registry backbone.
    """

    name = "pixels"
    embed_dim = 3
    num_blocks = 1

    def __init__(self, cell: int = 8):
        super().__init__()
        self.patch_size = cell

    def features(self, images: torch.Tensor, layers=(-1,), kind: str = "tokens") -> PixelOutput:
        """images: (B, 3, H, W) in [0, 1] -> maps [(B, 3, ceil(H/cell), ceil(W/cell))], cls [(B, 3)]."""
        grid = F.avg_pool2d(images, self.patch_size, ceil_mode=True)
        return PixelOutput(maps=[grid], cls=[grid.mean((2, 3))])


def build_feature_extractor(name: str, weights=None, device="cpu") -> nn.Module:
    """A registry backbone by name, or ``"pixels"`` for raw RGB (``"pixels8"``, ``"pixels4"``: cell size)."""
    if name.startswith("pixels"):
        cell = name[len("pixels") :] or "8"
        if not cell.isdigit() or int(cell) < 1:
            raise ConfigError(f"{name!r}: expected pixels<cell size>, e.g. pixels8 or pixels4")
        cell = int(cell)
        return PixelFeatures(cell).to(device)
    from leafseg.backbones import build_backbone

    return build_backbone(name, weights=weights, device=device)


class PseudoMaskGenerator(nn.Module):
    """Backbone features clustered into ``k`` regions per image.

    Args:
        encoder: a module with ``patch_size`` and ``features(images, layers, kind)`` (any leafseg backbone).
        k: regions per image (S-Seg uses 8).
        layer: which block's features to cluster (-1: the last).
        kind: "tokens", "keys", "queries" or "values" (see the backbone contract).
        metric: k-means distance, "cosine" (default) or "euclidean".
        max_iter, tol, seed: k-means settings.
        upsample: "bilinear" resizes the one-hot token assignments and takes the argmax (smooth borders);
            "nearest" resizes the token label map directly.
        feature_size: optional (H', W') the images are resized to before the encoder (rounded to the patch
            size); by default each image keeps its size, rounded to the nearest multiple of the patch.
    """

    def __init__(
        self,
        encoder: nn.Module,
        k: int = 8,
        *,
        layer: int = -1,
        kind: str = "tokens",
        metric: str = "cosine",
        max_iter: int = 50,
        tol: float = 1e-4,
        seed: int = 0,
        upsample: str = "bilinear",
        feature_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.encoder = encoder
        self.k, self.layer, self.kind, self.metric = k, layer, kind, metric
        self.max_iter, self.tol, self.seed = max_iter, tol, seed
        self.upsample, self.feature_size = upsample, feature_size

    @torch.no_grad()
    def regions(self, images: torch.Tensor) -> torch.Tensor:
        """Token-level regions. images: (B, 3, H, W) in [0, 1] -> (B, h, w) int64 in [0, k)."""
        pixels = encoder_input(images, self.encoder.patch_size, self.feature_size)
        feats = self.encoder.features(pixels, layers=(self.layer,), kind=self.kind)
        fmap = feats.maps[0]  # (B, C, h, w)
        b, c, h, w = fmap.shape
        if self.k > h * w:
            raise ConfigError(f"k={self.k} regions need at least as many tokens, the feature grid is {h}x{w}")
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
        result = batched_kmeans(
            tokens, self.k, metric=self.metric, max_iter=self.max_iter, tol=self.tol, seed=self.seed
        )
        return result.labels.view(b, h, w)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) float in [0, 1] -> (B, H, W) int64 region ids in [0, k)."""
        labels = self.regions(images)
        return upsample_labels(labels, images.shape[-2:], self.k, self.upsample)


def encoder_input(images: torch.Tensor, patch_size: int, feature_size=None) -> torch.Tensor:
    """Resize images for an encoder: (B, 3, H, W) -> (B, 3, H', W'), H' and W' multiples of ``patch_size``.

    feature_size: optional (H', W') before rounding; by default each side keeps its size, rounded to the
    nearest multiple of the patch (at least one patch). Images already of that size are returned as they are.
    """
    p = patch_size
    h, w = feature_size or images.shape[-2:]
    size = (max(p, round(h / p) * p), max(p, round(w / p) * p))
    if size == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def upsample_labels(labels: torch.Tensor, size, k: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize token label maps to image size.

    labels: (B, h, w) int64 in [0, k). size: (H, W). Returns (B, H, W) int64.
    "bilinear" interpolates the one-hot maps (B, k, h, w) and takes the argmax; "nearest" copies labels.
    """
    if mode == "nearest":
        return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
    onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).float()
    return F.interpolate(onehot, size=tuple(size), mode="bilinear", align_corners=False).argmax(1)
