"""FUSS's config turned into objects, the same on the server and on every client: the frozen encoder, the
initial head and centroids, a client's learner over its images, the shared validation set, the exchange.

The model is STEGO's, from the shared components: the frozen encoder built as the STEGO recipe builds it
(:func:`leafseg.recipes.stego_model.build_encoder`), a :class:`~leafseg.heads.stego.StegoHead`, K centroids
(:class:`~leafseg.heads.probes.ClusterProbe`), STEGO's correspondence loss
(:class:`~leafseg.losses.stego.CorrespondenceLoss`, ``local.loss``: a preset and any of its values), and the
harness method :class:`~leafseg.recipes.stego_model.StegoSegmenter`.

Everything random is drawn from ``cfg.seed`` (encoder weights when random, the initial head and centroids),
so each process that reads the same config builds the same starting point.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from leafseg.heads.probes import ClusterProbe
from leafseg.heads.stego import StegoHead
from leafseg.losses.stego import CorrespondenceLoss
from leafseg.recipes.fuss.config import FussConfig
from leafseg.recipes.fuss.strategies import Exchange, resolve_exchange
from leafseg.recipes.fuss.task import CENTROIDS, HEAD, LocalLearner
from leafseg.recipes.stego_config import BackboneSettings, LossSettings
from leafseg.recipes.stego_model import StegoSegmenter, build_encoder

__all__ = ["build_head_and_probe", "build_loss", "client_images", "exchange_of", "initial_state", "make_encoder",
           "make_learner", "segmenter_from_state", "validation_set"]


def make_encoder(cfg: FussConfig, device: str | torch.device = "cpu") -> nn.Module:
    """The frozen encoder of ``model``: a registry backbone built as the STEGO recipe builds it (random weights
    drawn from ``cfg.seed``), or ``pixels<cell>`` (raw RGB cells); eval mode, no gradients."""
    m = cfg.model
    if m.backbone.startswith("pixels"):
        from leafseg.grouping import build_feature_extractor

        return build_feature_extractor(m.backbone, device=device).eval().requires_grad_(False)
    backbone = BackboneSettings(name=m.backbone, weights=m.weights, arch_overrides=m.arch_overrides, layer=m.layer,
                                seed=cfg.seed)
    return build_encoder(backbone, device)


def build_head_and_probe(cfg: FussConfig, in_dim: int) -> tuple[StegoHead, ClusterProbe]:
    """A fresh STEGO head and K centroids, drawn from ``cfg.seed``; the head in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = StegoHead(in_dim, cfg.model.code_dim, cfg.model.dropout)
        probe = ClusterProbe(cfg.model.clusters, cfg.model.code_dim)
    return head.eval(), probe


def build_loss(settings: LossSettings) -> CorrespondenceLoss:
    """STEGO's correspondence loss with ``local.loss``'s values (the preset's, any of them overridden)."""
    return CorrespondenceLoss(**settings.values(), feature_samples=settings.feature_samples,
                              negatives=settings.negatives, centering=settings.centering,
                              zero_clamp=settings.zero_clamp)


def initial_state(cfg: FussConfig, encoder: nn.Module) -> dict[str, np.ndarray]:
    """The global state of round 0 (what every client starts the first round from): the head's parameters
    under ``head.<name>`` and the centroids under ``centroids``, float32 arrays."""
    head, probe = build_head_and_probe(cfg, encoder.embed_dim)
    state = {HEAD + k: p.detach().numpy().copy() for k, p in head.named_parameters()}
    state[CENTROIDS] = probe.centroids.detach().numpy().copy()
    return state


def segmenter_from_state(cfg: FussConfig, encoder: nn.Module, state: dict) -> StegoSegmenter:
    """A harness method with the head and centroids of ``state`` (numpy arrays or tensors; the keys of
    :func:`initial_state`, ValueError otherwise)."""
    head, _ = build_head_and_probe(cfg, encoder.embed_dim)
    weights = {k.removeprefix(HEAD): torch.as_tensor(np.asarray(v)) for k, v in state.items() if k.startswith(HEAD)}
    expected = {k for k, _ in head.named_parameters()}
    if set(weights) != expected or CENTROIDS not in state:
        raise ValueError(f"not a FUSS state: expected {CENTROIDS} and head.<name> for "
                         f"{sorted(expected)}, got {sorted(state)}")
    head.load_state_dict(weights)
    centroids = torch.as_tensor(np.asarray(state[CENTROIDS]))
    return StegoSegmenter(encoder, head, centroids, layer=cfg.model.layer)


def client_images(cfg: FussConfig, split_file: str | os.PathLike,
                  root: str | os.PathLike | None = None) -> torch.Tensor:
    """A client's images, (N, 3, S, S) in [0, 1]: the split file's samples of ``cfg.data.dataset`` at ``root``
    (default ``cfg.data.root``), each resized (short side S = ``cfg.data.size``) and centre-cropped. Only
    the images are kept."""
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import center_crop

    data = build_dataset(cfg.data.dataset, root or cfg.data.root, split_file=split_file, **cfg.data.options)
    side = cfg.data.size
    return torch.stack([center_crop(item["image"], item["mask"], side)[0] for item in data.iter_valid()])


def make_learner(cfg: FussConfig, encoder: nn.Module, images: torch.Tensor,
                 device: str | torch.device = "cpu") -> LocalLearner:
    """A client's learner, STEGO's: the head, K centroids, the correspondence loss of ``local.loss`` with the
    features through the head's Dropout2d as its target (as the STEGO recipe's step), the config's local
    settings."""
    head, probe = build_head_and_probe(cfg, encoder.embed_dim)
    loc = cfg.local
    return LocalLearner(encoder, images, head=head, probe=probe, objective=build_loss(loc.loss), target=head.dropout,
                        layer=cfg.model.layer, batch_size=loc.batch_size, lr_head=loc.lr_head, lr_probe=loc.lr_probe,
                        knn=loc.knn, flip=loc.flip, feature_batch=loc.feature_batch, device=device)


def validation_set(cfg: FussConfig):
    """The shared validation set (its first ``data.val_limit`` images when set)."""
    from leafseg.data.datasets import build_dataset

    data = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.val_split, **cfg.data.options)
    if cfg.data.val_limit:
        data.samples = data.samples[: cfg.data.val_limit]
    return data


def exchange_of(cfg: FussConfig) -> Exchange:
    s = cfg.strategy
    return resolve_exchange(s.name, head=s.head, centroids=s.centroids, proximal_mu=s.proximal_mu,
                            kmeans_restarts=s.kmeans_restarts, seed=cfg.seed)

