"""STEGO's model pieces: the frozen encoder, what learns (head + probes + the loss that trains them), the
harness methods that score it, and loading exported weights.

    encoder = build_encoder(cfg.backbone, device)               # frozen, eval mode
    model = build_model(cfg, encoder.embed_dim, num_clusters=27, num_classes=27)
    loss, parts = model(feats, knn_feats, masks)                 # one step's losses (feats from the encoder)
    method = StegoSegmenter(encoder, model.head, model.cluster.centroids)   # cluster ids for the harness

The federated recipe builds the same model per client; ``model.cluster.centroids`` (K, D) is what its
server merges besides the head's weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leafseg.errors import ConfigError
from leafseg.eval.segmenter import Segmenter
from leafseg.heads.probes import ClusterProbe, LinearProbe, cosine_assignment
from leafseg.heads.stego import StegoHead
from leafseg.losses.stego import CorrespondenceLoss
from leafseg.recipes.stego_config import BackboneSettings, StegoConfig

__all__ = ["LinearSegmenter", "StegoModel", "StegoSegmenter", "build_encoder", "build_model", "cluster_names",
           "load_segmenter"]


def build_encoder(backbone: BackboneSettings, device) -> nn.Module:
    """The frozen encoder of ``backbone``, on ``device``, in eval mode, without gradients. Random weights are
    drawn on the CPU from ``backbone.seed`` (the global generators untouched): the same encoder every time."""
    from leafseg.backbones import build_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbone.seed)
        encoder = build_backbone(backbone.name, weights=backbone.weights, device="cpu",
                                 arch_overrides=backbone.arch_overrides or None)
    return encoder.to(device).eval().requires_grad_(False)


class StegoModel(nn.Module):
    """What learns: the head, the cluster probe, the optional linear probe; and the loss that trains the head.

    forward(feats (B, C, h, w), knn_feats (B, C, h, w): each image's neighbour, masks (B, H, W) int64 or None)
    -> (loss, detached parts). loss = correspondence loss (head) + cluster loss + linear loss; both probes read
    detached codes, so only the correspondence loss reaches the head, and the masks reach only the linear
    probe. The correlation target is the features through the head's dropout, as in STEGO.
    """

    def __init__(self, head: StegoHead, cluster: ClusterProbe, loss: CorrespondenceLoss,
                 linear: LinearProbe | None = None):
        super().__init__()
        self.head, self.cluster, self.loss, self.linear = head, cluster, loss, linear

    def forward(self, feats: Tensor, knn_feats: Tensor, masks: Tensor | None = None) -> tuple[Tensor, dict]:
        codes, knn_codes = self.head(feats), self.head(knn_feats)
        corr = self.loss.terms(self.head.dropout(feats), codes, self.head.dropout(knn_feats), knn_codes)
        cluster = self.cluster.loss(codes)
        total = corr.loss + cluster
        parts = {"loss_corr": corr.loss.detach(), **corr.parts(), "loss_cluster": cluster.detach()}
        if self.linear is not None:
            if masks is None:
                raise ValueError("the linear probe needs the masks of the batch")
            linear = self.linear.loss(codes, masks)
            total = total + linear
            parts["loss_linear"] = linear.detach()
        return total, parts


def build_model(cfg: StegoConfig, in_dim: int, *, num_clusters: int, num_classes: int | None = None,
                ignore_index: int = 255) -> StegoModel:
    """The config's head, cluster probe (``num_clusters``), loss and, with ``probes.linear`` and
    ``num_classes``, linear probe."""
    h, lo = cfg.head, cfg.loss
    head = StegoHead(in_dim, h.code_dim, h.dropout, nonlinear=h.nonlinear)
    cluster = ClusterProbe(num_clusters, h.code_dim)
    loss = CorrespondenceLoss(**lo.values(), feature_samples=lo.feature_samples, negatives=lo.negatives,
                              centering=lo.centering, zero_clamp=lo.zero_clamp)
    # drawn last: with or without it, the head and the centroids start from the same draws
    linear = LinearProbe(h.code_dim, num_classes, ignore_index) if cfg.probes.linear and num_classes else None
    return StegoModel(head, cluster, loss, linear)


def encode(encoder: nn.Module, images: Tensor, layer: int) -> Tensor:
    """images (B, 3, H, W) in [0, 1] -> the encoder's patch features (B, C, h, w), float32, no gradient."""
    with torch.no_grad():
        return encoder.features(images, layers=(layer,)).maps[0].float()


class StegoSegmenter(Segmenter):
    """Cluster ids for the harness: features -> codes (``head``; ``nn.Identity()`` clusters raw features) ->
    codes resized (bilinear) to the input -> the centroid of highest cosine.

    images (B, 3, H, W) in [0, 1] -> (B, H, W) int64 in [0, K). ``class_names``: a name per cluster (for
    ``leafseg segment``), or None.
    """

    outputs = "clusters"

    def __init__(self, encoder: nn.Module, head: nn.Module, centroids: Tensor, *, layer: int = -1,
                 class_names: Sequence[str] | None = None):
        super().__init__()
        self.encoder, self.head, self.layer = encoder, head, layer
        self.register_buffer("centroids", centroids.detach().clone().float())
        self.num_clusters = int(centroids.shape[0])
        self.class_names = list(class_names) if class_names is not None else None

    def forward(self, images: Tensor) -> Tensor:
        codes = self.head(encode(self.encoder, images, self.layer))
        codes = F.interpolate(codes, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return cosine_assignment(codes, self.centroids)[1]


class LinearSegmenter(Segmenter):
    """The linear probe's class logits for the harness: images (B, 3, H, W) -> (B, C, h, w)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, probe: LinearProbe, *, layer: int = -1):
        super().__init__()
        self.encoder, self.head, self.probe, self.layer = encoder, head, probe, layer

    def forward(self, images: Tensor) -> Tensor:
        return self.probe(self.head(encode(self.encoder, images, self.layer)))


def cluster_names(assignment: Sequence[int] | None, classes: Sequence[str], num_clusters: int) -> list[str]:
    """A name per cluster: the class it was matched to (``assignment``: a class index per cluster), suffixed
    with its number when two clusters share a class; ``cluster k`` without an assignment."""
    if assignment is None:
        return [f"cluster {k}" for k in range(num_clusters)]
    names = [str(classes[c]) for c in assignment]
    return [f"{n} (cluster {k})" if names.count(n) > 1 else n for k, n in enumerate(names)]


def load_segmenter(exported: dict, device: str) -> StegoSegmenter:
    """Exported weights (head, cluster probe; the encoder rebuilt from the config) as the harness method."""
    from leafseg.config import load_config

    cfg = load_config(StegoConfig, None, exported["config"])
    state = exported["model"]
    if "cluster.centroids" not in state:
        raise ConfigError("these stego weights hold no cluster centroids (cluster.centroids)")
    encoder = build_encoder(cfg.backbone, torch.device(device))
    head = StegoHead(encoder.embed_dim, cfg.head.code_dim, cfg.head.dropout, nonlinear=cfg.head.nonlinear)
    head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    return StegoSegmenter(encoder, head.to(device).eval(), state["cluster.centroids"].to(device),
                          layer=cfg.backbone.layer, class_names=exported["extra"].get("classes")).eval()
