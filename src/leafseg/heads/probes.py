"""Probes on segmentation codes: STEGO's cluster probe (the unsupervised prediction) and its linear probe (an
evaluation device).

    probe = ClusterProbe(27, 70)                 # 27 learnable centroids in the 70-d code space
    loss = probe.loss(codes)                     # codes (B, 70, h, w) -> scalar, on the detached codes
    labels = probe(codes)                        # cluster ids (B, h, w) int64

* :class:`ClusterProbe`: K centroids; each code goes to the centroid of highest cosine; the loss is minus the
  mean of those cosines (minibatch spherical k-means by gradient descent). Its centroids are what a
  federation shares (FUSS).
* :class:`LinearProbe`: a 1x1 conv to class logits trained with labels. It measures how linearly separable the
  codes are and nothing else.

Both read their codes DETACHED: neither probe can send a gradient into the head that makes the codes, so
the labels the linear probe sees never reach a parameter that shapes the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClusterProbe", "LinearProbe", "cosine_assignment"]


def cosine_assignment(codes: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine of every code to every centroid, and the best centroid of each code.

    codes (B, D, h, w), centroids (K, D) -> (cosines (B, K, h, w), labels (B, h, w) int64; ties go to the
    lowest index)."""
    if codes.ndim != 4 or centroids.ndim != 2 or codes.shape[1] != centroids.shape[1]:
        raise ValueError(f"need codes (B, D, h, w) and centroids (K, D) of one D, got {tuple(codes.shape)} and "
                         f"{tuple(centroids.shape)}")
    cos = torch.einsum("bdhw,kd->bkhw", F.normalize(codes, dim=1), F.normalize(centroids, dim=1))
    return cos, cos.argmax(1)


class ClusterProbe(nn.Module):
    """K learnable centroids (``centroids``, (K, D), drawn from a standard normal as STEGO's are).

    ``probe.loss(codes)``: minus the mean cosine of each code to its nearest centroid, on the DETACHED codes
    (only the centroids learn); ``probe.cosines(codes)`` -> (B, K, h, w); ``probe(codes)`` -> cluster ids
    (B, h, w) int64. codes: (B, D, h, w).
    """

    def __init__(self, num_clusters: int, code_dim: int):
        super().__init__()
        if code_dim < 1 or num_clusters < 1:
            raise ValueError(f"num_clusters and code_dim must be positive, got {num_clusters} and {code_dim}")
        self.centroids = nn.Parameter(torch.randn(num_clusters, code_dim))

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def cosines(self, codes: Tensor) -> Tensor:
        """codes (B, D, h, w) -> (B, K, h, w): the cosine of every code to every centroid."""
        return cosine_assignment(codes, self.centroids)[0]

    def loss(self, codes: Tensor) -> Tensor:
        """codes (B, D, h, w) -> scalar: minus the mean cosine to the nearest centroid (codes detached)."""
        return -self.cosines(codes.detach()).amax(1).mean()

    @torch.no_grad()
    def forward(self, codes: Tensor) -> Tensor:
        """codes (B, D, h, w) -> cluster ids (B, h, w) int64 in [0, K)."""
        return cosine_assignment(codes, self.centroids)[1]


class LinearProbe(nn.Module):
    """A 1x1 conv from codes to class logits, trained with labels on detached codes (evaluation only).

    forward(codes (B, D, h, w)) -> logits (B, C, h, w); loss(codes, labels (B, H, W) int64) -> cross-entropy
    of the logits resized (bilinear) to the labels, ``ignore_index`` pixels left out."""

    def __init__(self, code_dim: int, num_classes: int, ignore_index: int = 255):
        super().__init__()
        self.conv = nn.Conv2d(code_dim, num_classes, 1)
        self.ignore_index = int(ignore_index)

    def forward(self, codes: Tensor) -> Tensor:
        return self.conv(codes.detach())

    def loss(self, codes: Tensor, labels: Tensor) -> Tensor:
        logits = F.interpolate(self(codes), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        per_pixel = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="none")
        return per_pixel.sum() / (labels != self.ignore_index).sum().clamp_min(1)  # 0 when nothing is labelled
