"""Class-agnostic regions from self-supervised features: the grouping step of "group, then recognise".

The feature map of an image, ``F^L`` of shape (C, h, w) on the patch grid, is split into M regions by
assigning every patch to its nearest centroid; this gives the low-resolution masks ``M^L``. The features
upsampled bilinearly to image resolution, ``F^H`` (C, H, W), are assigned to the same centroids; this gives
the high-resolution masks ``M^H``. Where the centroids come from is pluggable:

* per-image k-means on the patch features (the training-free default, M = 27), through
  :func:`leafseg.grouping.kmeans.batched_kmeans`: every image of a batch at once, on its device;
* given centroids shared by all images, e.g. the M cluster centres of a trained STEGO cluster probe:
  a tensor (M, C) (or (B, M, C)), or a callable ``features (B, C, h, w) -> (M, C) or (B, M, C)``.

Assignment is by cosine similarity (``metric="cosine"``, the default) or squared Euclidean distance. Both
scores are affine in the feature vector once terms common to all centroids are dropped (``f . c/|c|``,
or ``f . c - |c|^2 / 2``), and bilinear weights sum to one, so the scores of the upsampled features equal
the upsampled low-resolution scores. The high-resolution assignment therefore interpolates (B, M, h, w)
scores instead of (B, C, h, w) features: the same labels, with M channels at image size instead of C.

Empty regions. A region may hold no patch (k-means can end with an empty cluster; a shared probe has
centroids for concepts absent from an image). ``present`` (B, M) marks the regions with at least one
patch on the low-resolution grid, the masks the recognition step encodes. Pixels are only assigned to
present regions, so every pixel of ``M^H`` lies in a region that has a low-resolution mask; a present
region can still get no pixel at image resolution (``present_high``).

Region ``m`` of one image has nothing to do with region ``m`` of another, except with shared centroids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from leafseg.errors import ConfigError
from leafseg.grouping.kmeans import batched_kmeans
from leafseg.grouping.pseudo_masks import encoder_input

METRICS = ("cosine", "euclidean")
DEFAULT_REGIONS = 27

CentroidSource = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Regions:
    """M class-agnostic regions of each image of a batch.

    labels_low:  (B, h, w) int64 in [0, M): the region of every patch of the feature grid.
    labels_high: (B, H, W) int64 in [0, M): the region of every pixel; always a present region.
    present:     (B, M) bool, True where the region holds at least one patch.
    centroids:   (B, M, C) float32, the centres the features were assigned to (shared centroids repeated).
    The masks ``low`` (B, M, h, w) and ``high`` (B, M, H, W) are one-hot bool views of the label maps,
    built when asked for.
    """

    labels_low: torch.Tensor
    labels_high: torch.Tensor
    present: torch.Tensor
    centroids: torch.Tensor

    @property
    def num_regions(self) -> int:
        return self.present.shape[1]

    @property
    def low(self) -> torch.Tensor:
        """(B, M, h, w) bool low-resolution masks M^L on the patch grid."""
        return _one_hot(self.labels_low, self.num_regions)

    @property
    def high(self) -> torch.Tensor:
        """(B, M, H, W) bool high-resolution masks M^H at image resolution."""
        return _one_hot(self.labels_high, self.num_regions)

    @property
    def present_high(self) -> torch.Tensor:
        """(B, M) bool, True where the region holds at least one pixel at image resolution."""
        return _counts(self.labels_high, self.num_regions) > 0


def _one_hot(labels: torch.Tensor, m: int) -> torch.Tensor:
    """(B, h, w) int64 -> (B, M, h, w) bool."""
    return labels.unsqueeze(1) == torch.arange(m, device=labels.device).view(1, m, 1, 1)


def _counts(labels: torch.Tensor, m: int) -> torch.Tensor:
    """(B, h, w) int64 in [0, M) -> (B, M) int64 number of positions per region, one bincount."""
    b = labels.shape[0]
    offset = torch.arange(b, device=labels.device).view(b, 1) * m
    return torch.bincount((labels.reshape(b, -1) + offset).reshape(-1), minlength=b * m).view(b, m)


def kmeans_centroids(features: torch.Tensor, num_regions: int, *, metric: str = "cosine", max_iter: int = 50,
                     tol: float = 1e-4, seed: int | None = 0) -> torch.Tensor:
    """Per-image k-means centres of the patch features.

    features: (B, C, h, w). Returns (B, M, C) float32 (unit norm for the cosine metric).
    Every image reads the same k-means++ draws from ``seed`` and stops on its own, so an image's centres are
    the same alone, in any batch and on any number of processes.
    """
    b, c, h, w = features.shape
    if not 1 <= num_regions <= h * w:
        raise ConfigError(f"{num_regions} regions need at least as many patches; the feature grid is {h}x{w}")
    tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
    return batched_kmeans(tokens, num_regions, metric=metric, max_iter=max_iter, tol=tol, seed=seed).centroids


def _given_centroids(source: CentroidSource, features: torch.Tensor) -> torch.Tensor:
    """Centroids from a tensor or a callable, checked and broadcast: -> (B, M, C) float32."""
    b, c = features.shape[:2]
    cents = source(features) if callable(source) else source
    if not isinstance(cents, torch.Tensor):
        raise ConfigError(f"the centroid source must give a tensor, got {type(cents).__name__}")
    cents = cents.to(device=features.device, dtype=torch.float32)
    if cents.ndim == 2:
        cents = cents.unsqueeze(0).expand(b, -1, -1)
    if cents.ndim != 3 or cents.shape[0] != b or cents.shape[2] != c or cents.shape[1] < 1:
        raise ConfigError(f"centroids must be (M, {c}) or ({b}, M, {c}) for features with {c} channels, "
                          f"got {tuple(cents.shape)}")
    return cents


def assignment_scores(features: torch.Tensor, centroids: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Scores whose argmax over M is the nearest centroid, affine in each feature vector.

    features: (B, C, h, w); centroids: (B, M, C). Returns (B, M, h, w) float32: ``f . c/|c|`` (cosine,
    the cosine times |f|, which does not depend on the centroid) or ``f . c - |c|^2/2`` (Euclidean,
    ``(|f|^2 - |f - c|^2) / 2``).
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    f = features.float()
    if metric == "cosine":
        c = F.normalize(centroids, dim=-1)
        return torch.einsum("bmc,bchw->bmhw", c, f)
    bias = -0.5 * centroids.square().sum(-1)  # (B, M)
    return torch.einsum("bmc,bchw->bmhw", centroids, f) + bias[:, :, None, None]


def group_regions(features: torch.Tensor, size: tuple[int, int], *, num_regions: int | None = None,
                  centroids: CentroidSource | None = None, metric: str = "cosine", max_iter: int = 50,
                  tol: float = 1e-4, seed: int | None = 0) -> Regions:
    """Group patch features into M regions at patch and image resolution.

    features: (B, C, h, w) float, any device (computed in float32). size: (H, W) of the images.
    num_regions: M for k-means (default 27); with given centroids M is theirs (a different explicit
        value is an error).
    centroids: None (per-image k-means with ``metric``, ``max_iter``, ``tol``, ``seed``), a tensor
        (M, C) or (B, M, C), or a callable ``features -> (M, C) or (B, M, C)``.
    metric: "cosine" or "euclidean", for k-means and for the assignment.
    Returns :class:`Regions`: labels_low (B, h, w), labels_high (B, H, W), present (B, M), centroids (B, M, C).
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if centroids is None:
        m = DEFAULT_REGIONS if num_regions is None else num_regions
        cents = kmeans_centroids(features, m, metric=metric, max_iter=max_iter, tol=tol, seed=seed)
    else:
        cents = _given_centroids(centroids, features)
        if num_regions is not None and num_regions != cents.shape[1]:
            raise ConfigError(f"num_regions={num_regions} but the centroids hold {cents.shape[1]} regions")
    m = cents.shape[1]
    scores = assignment_scores(features, cents, metric)  # (B, M, h, w)
    labels_low = scores.argmax(1)
    present = _counts(labels_low, m) > 0
    high = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)  # (B, M, H, W)
    high.masked_fill_(~present[:, :, None, None], float("-inf"))
    return Regions(labels_low=labels_low, labels_high=high.argmax(1), present=present, centroids=cents)


class RegionGrouper(nn.Module):
    """Images (or precomputed features) -> :class:`Regions`, with the settings fixed once.

    Args:
        encoder: a module with ``patch_size`` and ``features(images, layers, kind)`` (a registry backbone,
            or :class:`~leafseg.grouping.PixelFeatures`); None when only :meth:`group` is used.
        num_regions: M (default 27 for k-means; inferred from given centroids).
        centroids: None for per-image k-means, or shared centroids: a tensor (M, C) or a callable
            ``features (B, C, h, w) -> (M, C) or (B, M, C)`` (a trained cluster probe).
        layer, kind: which block's features and which kind ("tokens", "keys", ...) to group.
        metric, max_iter, tol, seed: assignment metric and k-means settings.
        feature_size: optional (H', W') the images are resized to before the encoder (rounded to the
            patch size); by default each image keeps its size, rounded to a multiple of the patch.
    A tensor of centroids is kept as a buffer, so it follows ``.to(device)`` and is saved with the module.
    """

    def __init__(self, encoder: nn.Module | None = None, num_regions: int | None = None, *,
                 centroids: CentroidSource | None = None, layer: int = -1, kind: str = "tokens",
                 metric: str = "cosine", max_iter: int = 50, tol: float = 1e-4, seed: int | None = 0,
                 feature_size: tuple[int, int] | None = None):
        super().__init__()
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
        if num_regions is not None and num_regions < 1:
            raise ConfigError(f"num_regions must be at least 1, got {num_regions}")
        self.encoder = encoder
        self.num_regions, self.layer, self.kind, self.metric = num_regions, layer, kind, metric
        self.max_iter, self.tol, self.seed, self.feature_size = max_iter, tol, seed, feature_size
        shared = isinstance(centroids, torch.Tensor)
        self.register_buffer("shared_centroids", centroids.detach().clone() if shared else None)
        self.source = None if shared else centroids

    @torch.no_grad()
    def group(self, features: torch.Tensor, size: tuple[int, int]) -> Regions:
        """features: (B, C, h, w) on the patch grid; size: (H, W) of the images. -> :class:`Regions`."""
        source = self.shared_centroids if self.shared_centroids is not None else self.source
        return group_regions(features, size, num_regions=self.num_regions, centroids=source,
                             metric=self.metric, max_iter=self.max_iter, tol=self.tol, seed=self.seed)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] -> the encoder's (B, C, h, w) feature map."""
        if self.encoder is None:
            raise ConfigError("this RegionGrouper has no encoder: pass features to group() instead")
        pixels = encoder_input(images, self.encoder.patch_size, self.feature_size)
        return self.encoder.features(pixels, layers=(self.layer,), kind=self.kind).maps[0]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Regions:
        """images: (B, 3, H, W) float in [0, 1] -> :class:`Regions` with masks at (H, W)."""
        return self.group(self.features(images), images.shape[-2:])
