"""The pieces of a FUSS client's model: the frozen encoder, a projection head, K cosine centroids, the
head's label-free objective, and the segmenter the harness scores.

The encoder never changes and never travels. The head maps features to codes; the centroids
(:class:`ClusterProbe`, STEGO's cluster probe) are fitted to detached codes as minibatch spherical k-means,
so they never shape the head. The learner (:mod:`leafseg.recipes.fuss.task`) takes the head and the
objective as constructor arguments; any head ``(B, C, h, w) -> (B, D, h, w)`` and any objective
``(feats, codes, neighbour_feats, neighbour_codes) -> loss`` fit, so STEGO's head and its correspondence
loss replace :class:`ProjectionHead` and :class:`SimilarityDistillation` without touching the learner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leafseg.eval.segmenter import Segmenter

__all__ = ["ClusterProbe", "FussSegmenter", "ProjectionHead", "SimilarityDistillation", "build_encoder",
           "encoder_features"]


def build_encoder(backbone: str, weights: str | None = None, arch_overrides: dict | None = None, *, seed: int = 0,
                  device: str | torch.device = "cpu") -> nn.Module:
    """The frozen encoder: a registry backbone (or ``pixels<cell>``), in eval mode, without gradients.

    Random weights are drawn from ``seed``, so the server and every client build the same encoder."""
    if backbone.startswith("pixels"):
        from leafseg.grouping import build_feature_extractor

        encoder = build_feature_extractor(backbone, device=device)
    else:
        from leafseg.backbones import build_backbone

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = build_backbone(backbone, weights=weights, device=str(device), arch_overrides=arch_overrides)
    encoder.requires_grad_(False)
    return encoder.eval()


@torch.no_grad()
def encoder_features(encoder: nn.Module, images: Tensor, layer: int = -1) -> Tensor:
    """images (B, 3, H, W) in [0, 1] -> patch features (B, C, ceil(H/p), ceil(W/p)) of block ``layer``."""
    return encoder.features(images, layers=(layer,)).maps[0].float()


class ProjectionHead(nn.Module):
    """features (B, C, h, w) -> codes (B, D, h, w): a linear 1x1 branch plus a nonlinear one (1x1, ReLU,
    1x1), summed, after Dropout2d on the features (the shape of STEGO's head)."""

    def __init__(self, in_dim: int, code_dim: int = 70, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(in_dim, code_dim, 1)
        self.nonlinear = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, code_dim, 1))

    def forward(self, feats: Tensor) -> Tensor:
        x = self.dropout(feats)
        return self.linear(x) + self.nonlinear(x)


class ClusterProbe(nn.Module):
    """K learnable centroids; a code takes its nearest centroid by cosine.

    ``loss(codes)`` is minus the mean cosine of every code to its assigned centroid (minibatch spherical
    k-means); pass detached codes, as STEGO does, so the probe never shapes the head."""

    def __init__(self, clusters: int, dim: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(clusters, dim))

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def cosines(self, codes: Tensor) -> Tensor:
        """codes (B, D, h, w) -> (B, K, h, w) cosine of every code to every centroid."""
        return torch.einsum("bdhw,kd->bkhw", F.normalize(codes, dim=1), F.normalize(self.centroids, dim=1))

    def loss(self, codes: Tensor) -> Tensor:
        """codes (B, D, h, w) -> scalar: minus the mean cosine to the assigned centroid."""
        return -self.cosines(codes).amax(1).mean()

    def forward(self, codes: Tensor) -> Tensor:
        """codes (B, D, h, w) -> cluster ids (B, h, w) int64 in [0, K)."""
        return self.cosines(codes).argmax(1)


class SimilarityDistillation(nn.Module):
    """A label-free objective for the head: the cosine similarities between codes should repeat the
    cosine similarities between the frozen features they come from.

    ``points x points`` positions are drawn per image (torch's generator); for each pairing, F is the
    (B, P, P) cosine matrix of features between an image's points and its partner's, S that of codes, and
    the loss is the mean squared difference. Pairings, as STEGO's: an image with itself (two draws), with
    its nearest neighbour, with another image of the batch. A stand-in for STEGO's correspondence loss,
    which takes the same four arguments."""

    def __init__(self, points: int = 11, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.points, self.weights = points, weights

    def _sample(self, x: Tensor, grid: Tensor) -> Tensor:
        """x (B, C, h, w), grid (B, P, 2) in [-1, 1] -> (B, P, C) unit vectors."""
        picked = F.grid_sample(x, grid[:, :, None], mode="bilinear", align_corners=False)[..., 0]
        return F.normalize(picked.transpose(1, 2), dim=-1)

    def _pair(self, fa, ca, fb, cb) -> Tensor:
        b, n = fa.shape[0], self.points * self.points
        ga = torch.rand(b, n, 2, device=fa.device) * 2 - 1
        gb = torch.rand(b, n, 2, device=fa.device) * 2 - 1
        f = self._sample(fa, ga) @ self._sample(fb, gb).transpose(1, 2)
        s = self._sample(ca, ga) @ self._sample(cb, gb).transpose(1, 2)
        return (s - f).square().mean()

    def forward(self, feats: Tensor, codes: Tensor, neighbour_feats: Tensor, neighbour_codes: Tensor) -> Tensor:
        """feats (B, C, h, w), codes (B, D, h, w), and the same of each image's neighbour -> scalar loss."""
        shuffle = torch.roll(torch.arange(feats.shape[0], device=feats.device), 1)
        w_self, w_nbr, w_rand = self.weights
        return (w_self * self._pair(feats, codes, feats, codes)
                + w_nbr * self._pair(feats, codes, neighbour_feats, neighbour_codes)
                + w_rand * self._pair(feats, codes, feats[shuffle], codes[shuffle]))


class FussSegmenter(Segmenter):
    """A FUSS model as a harness method: images -> cluster ids (Hungarian-matched by the harness).

    Codes are resized (bilinear) to the image before each pixel takes its nearest centroid."""

    outputs = "clusters"

    def __init__(self, encoder: nn.Module, head: nn.Module, probe: ClusterProbe, layer: int = -1):
        super().__init__()
        self.encoder, self.head, self.probe, self.layer = encoder, head, probe, layer
        self.num_clusters = probe.num_clusters

    def prepare(self, class_names, protocol) -> None:
        self.num_clusters = self.probe.num_clusters

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> cluster ids (B, H, W) int64 in [0, K)."""
        codes = self.head(encoder_features(self.encoder, images, self.layer))
        codes = F.interpolate(codes, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.probe(codes)
