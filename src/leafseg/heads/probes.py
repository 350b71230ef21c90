"""Probes on segmentation codes: STEGO's cluster probe (the unsupervised prediction) and its linear probe (an
evaluation device).

    probe = ClusterProbe(70, 27)                 # 27 learnable centroids in the 70-d code space
    out = probe(codes)                           # codes (B, 70, h, w): out.loss, out.labels (B, h, w)
    labels = probe.predict(codes)                # cluster ids (B, h, w) int64

* :class:`ClusterProbe`: K centroids; each code goes to the centroid of highest cosine; the loss is minus the
  mean of those cosines (minibatch spherical k-means by gradient descent). Its centroids are what a
  federation shares (FUSS).
* :class:`LinearProbe`: a 1x1 conv to class logits trained with labels. It measures how linearly separable the
  codes are and nothing else.

Both read their codes DETACHED: neither probe can send a gradient into the head that makes the codes, so
the labels the linear probe sees never reach a parameter that shapes the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClusterOutput", "ClusterProbe", "LinearProbe", "cosine_assignment"]


def cosine_assignment(codes: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine of every code to every centroid, and the best centroid of each code.

    codes (B, D, h, w), centroids (K, D) -> (cosines (B, K, h, w), labels (B, h, w) int64; ties go to the
    lowest index)."""
    if codes.ndim != 4 or centroids.ndim != 2 or codes.shape[1] != centroids.shape[1]:
        raise ValueError(f"need codes (B, D, h, w) and centroids (K, D) of one D, got {tuple(codes.shape)} and "
                         f"{tuple(centroids.shape)}")
    cos = torch.einsum("bdhw,kd->bkhw", F.normalize(codes, dim=1), F.normalize(centroids, dim=1))
    return cos, cos.argmax(1)


@dataclass
class ClusterOutput:
    """loss: scalar, minus the mean cosine of each code to its centroid; labels (B, h, w) int64 cluster ids;
    cosines (B, K, h, w)."""

    loss: Tensor
    labels: Tensor
    cosines: Tensor


class ClusterProbe(nn.Module):
    """K learnable centroids (``centroids``, (K, D), drawn from a standard normal as STEGO's are).

    forward(codes (B, D, h, w)) -> :class:`ClusterOutput` on the detached codes (only the centroids learn).
    """

    def __init__(self, code_dim: int, num_clusters: int):
        super().__init__()
        if code_dim < 1 or num_clusters < 1:
            raise ValueError(f"code_dim and num_clusters must be positive, got {code_dim} and {num_clusters}")
        self.centroids = nn.Parameter(torch.randn(num_clusters, code_dim))

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def forward(self, codes: Tensor) -> ClusterOutput:
        cos, labels = cosine_assignment(codes.detach(), self.centroids)
        best = cos.gather(1, labels[:, None])  # (B, 1, h, w): the cosine to the assigned centroid
        return ClusterOutput(-best.mean(), labels, cos)

    @torch.no_grad()
    def predict(self, codes: Tensor) -> Tensor:
        """codes (B, D, h, w) -> cluster ids (B, h, w) int64."""
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
