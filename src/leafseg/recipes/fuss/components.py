"""FUSS's config turned into objects, the same on the server and on every client: the frozen encoder, the
initial head and centroids, a client's learner over its images, the shared validation set, the exchange.

Everything random is drawn from ``cfg.seed`` (encoder weights when random, the initial head and centroids),
so each process that reads the same config builds the same starting point.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from leafseg.recipes.fuss.config import FussConfig
from leafseg.recipes.fuss.model import (
    ClusterProbe,
    FussSegmenter,
    ProjectionHead,
    SimilarityDistillation,
    build_encoder,
)
from leafseg.recipes.fuss.strategies import Exchange, resolve_exchange
from leafseg.recipes.fuss.task import LocalLearner

__all__ = ["build_head_and_probe", "client_images", "exchange_of", "initial_state", "make_encoder", "make_learner",
           "segmenter_from_state", "validation_set"]


def make_encoder(cfg: FussConfig, device: str | torch.device = "cpu") -> nn.Module:
    m = cfg.model
    return build_encoder(m.backbone, m.weights, m.arch_overrides or None, seed=cfg.seed, device=device)


def build_head_and_probe(cfg: FussConfig, in_dim: int) -> tuple[nn.Module, ClusterProbe]:
    """A fresh head and K centroids, drawn from ``cfg.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = ProjectionHead(in_dim, cfg.model.code_dim, cfg.model.dropout)
        probe = ClusterProbe(cfg.model.clusters, cfg.model.code_dim)
    return head.eval(), probe


def initial_state(cfg: FussConfig, encoder: nn.Module) -> dict[str, np.ndarray]:
    """The global state of round 0 (what every client starts the first round from)."""
    from leafseg.recipes.fuss.task import CENTROIDS, HEAD

    head, probe = build_head_and_probe(cfg, encoder.embed_dim)
    state = {HEAD + k: p.detach().numpy().copy() for k, p in head.named_parameters()}
    state[CENTROIDS] = probe.centroids.detach().numpy().copy()
    return state


def segmenter_from_state(cfg: FussConfig, encoder: nn.Module, state: dict) -> FussSegmenter:
    """A harness method with the head and centroids of ``state`` (numpy arrays or tensors)."""
    from leafseg.recipes.fuss.task import CENTROIDS, HEAD

    head, probe = build_head_and_probe(cfg, encoder.embed_dim)
    params = {HEAD + k: p for k, p in head.named_parameters()}
    params[CENTROIDS] = probe.centroids
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(state[key])))
    return FussSegmenter(encoder, head, probe, cfg.model.layer)


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
    """A client's learner: the projection head and the similarity objective (the two pieces a STEGO head and
    correspondence loss replace), K centroids, the config's local settings."""
    head, probe = build_head_and_probe(cfg, encoder.embed_dim)
    loc = cfg.local
    return LocalLearner(encoder, images, head=head, probe=probe, objective=SimilarityDistillation(loc.points),
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

