"""A FUSS client's local learning, in plain PyTorch, behind a small interface the Flower apps call::

    learner = LocalLearner(encoder, images, head=head, probe=probe, objective=objective, target=head.dropout)
    learner.set_state(state)                          # dict name -> numpy array, from the server
    metrics = learner.fit(steps, seed=s, proximal=(global_state, mu))   # or proximal=None
    state = learner.get_state()                       # what travels back: head weights and centroids
    ids = learner.predict(images)                     # (B, H, W) cluster ids
    report = learner.evaluate(dataset, protocol)      # through the harness (Hungarian-matched mIoU)

FUSS's learner (:func:`leafseg.recipes.fuss.components.make_learner`) is STEGO's: the head a
:class:`~leafseg.heads.stego.StegoHead`, the probe a :class:`~leafseg.heads.probes.ClusterProbe`, the objective
a :class:`~leafseg.losses.stego.CorrespondenceLoss`, its correlation target the features through the head's
own Dropout2d (as :class:`~leafseg.recipes.stego_model.StegoModel` does). Any head ``(B, C, h, w) -> (B, D, h,
w)`` and any objective ``(feats, codes, neighbour_feats, neighbour_codes) -> scalar`` fit as well.

What travels is :meth:`LocalLearner.get_state`: the head's parameters under ``head.<name>`` and the
centroids under ``centroids`` (:data:`CENTROIDS`), float32 arrays. Images, features and labels never leave
the learner, and fitting reads no labels: the learner is given images only.

The frozen encoder's features of the client's images are computed once (the encoder never changes) and
kept as a bank, with each image's nearest neighbours by cosine of the mean-pooled features (STEGO's kNN
table). A step draws a batch of features and one neighbour of each (optionally flipped), passes both
through the head, and minimises ``objective(target(feats), codes, target(neighbour_feats), neighbour_codes)``
plus the centroids' loss on the detached codes (plus FedProx's ``mu/2 * ||theta - theta_global||^2`` when
asked). A fresh Adam per call to :meth:`fit`, and every draw (batches, flips, dropout, the loss's points and
partners) from ``seed``, so a round is a function of the state received, the seed and the client's images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leafseg.heads.probes import ClusterProbe
from leafseg.recipes.stego_model import StegoSegmenter, encode

CENTROIDS = "centroids"
HEAD = "head."

__all__ = ["CENTROIDS", "HEAD", "FeatureBank", "LocalLearner", "state_shapes"]


def state_shapes(state: dict) -> dict[str, tuple[int, ...]]:
    """name -> shape of a state dict (numpy arrays or tensors)."""
    return {k: tuple(v.shape) for k, v in state.items()}


class FeatureBank:
    """The frozen features of a client's images and each image's nearest neighbours.

    images: (N, 3, S, S) float in [0, 1] (or a sequence of (3, S, S)). feats: (N, C, h, w) float32;
    neighbours: (N, k) int64 indices of the k most similar other images (cosine of mean-pooled features;
    an image is its own neighbour only when it is alone)."""

    def __init__(self, encoder: nn.Module, images, *, layer: int = -1, knn: int = 7, batch: int = 32,
                 device: str | torch.device = "cpu"):
        maps = []
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            chunk = chunk if isinstance(chunk, Tensor) else torch.stack(list(chunk))
            maps.append(encode(encoder, chunk.to(device), layer))
        if not maps:
            raise ValueError("a client needs at least one image")
        self.feats = torch.cat(maps)
        pooled = F.normalize(self.feats.mean((2, 3)), dim=1)
        sim = pooled @ pooled.t()
        n = len(self.feats)
        if n > 1:
            sim.fill_diagonal_(-float("inf"))
        k = max(1, min(knn, n - 1)) if n > 1 else 1
        self.neighbours = sim.topk(k, dim=1).indices

    def __len__(self) -> int:
        return len(self.feats)


class LocalLearner:
    """One client's label-free learner (see the module docstring).

    encoder: frozen (its features are banked at construction). images: the client's images, (N, 3, S, S).
    head: features (B, C, h, w) -> codes (B, D, h, w). probe: the K centroids. objective: the head's loss
    ``(feats, codes, neighbour_feats, neighbour_codes) -> scalar``. target: applied to the features (both
    images) before the objective reads them as its correlation target (STEGO: the head's ``dropout``);
    None: the banked features as they are.
    """

    def __init__(self, encoder: nn.Module, images, *, head: nn.Module, probe: ClusterProbe, objective: nn.Module,
                 target: nn.Module | None = None, layer: int = -1, batch_size: int = 8, lr_head: float = 5e-4,
                 lr_probe: float = 5e-3, knn: int = 7, flip: bool = True, feature_batch: int = 32,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.encoder, self.layer = encoder, layer
        self.head, self.probe, self.objective = head.to(self.device), probe.to(self.device), objective
        self.target = target
        self.batch_size, self.lr_head, self.lr_probe, self.flip = batch_size, lr_head, lr_probe, flip
        self.bank = FeatureBank(encoder, images, layer=layer, knn=knn, batch=feature_batch, device=self.device)

    @property
    def num_examples(self) -> int:
        return len(self.bank)

    # -- what travels ------------------------------------------------------------------------------
    def _parameters(self) -> dict[str, nn.Parameter]:
        named = {HEAD + k: p for k, p in self.head.named_parameters()}
        named[CENTROIDS] = self.probe.centroids
        return named

    def get_state(self) -> dict[str, np.ndarray]:
        """The head's parameters (``head.<name>``) and the centroids (``centroids``), float32 copies."""
        return {k: p.detach().cpu().float().numpy().copy() for k, p in self._parameters().items()}

    def set_state(self, state: dict) -> None:
        """Load a state of exactly the keys and shapes of :meth:`get_state` (ValueError otherwise)."""
        params = self._parameters()
        if set(state) != set(params):
            raise ValueError(f"state keys differ: missing {sorted(set(params) - set(state))}, "
                             f"unexpected {sorted(set(state) - set(params))}")
        with torch.no_grad():
            for k, p in params.items():
                value = torch.as_tensor(np.asarray(state[k]))
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"state {k}: shape {tuple(value.shape)}, expected {tuple(p.shape)}")
                p.copy_(value.to(p))

    # -- local training ----------------------------------------------------------------------------
    def _batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(feats, neighbour feats), each (B, C, h, w), drawn with ``generator``."""
        n, k = self.bank.neighbours.shape
        idx = torch.randint(n, (self.batch_size,), generator=generator)
        nbr = self.bank.neighbours[idx, torch.randint(k, (self.batch_size,), generator=generator)]
        feats, nfeats = self.bank.feats[idx], self.bank.feats[nbr]
        if self.flip:
            flip = torch.rand(self.batch_size, generator=generator) < 0.5
            feats = torch.where(flip.view(-1, 1, 1, 1).to(feats.device), feats.flip(-1), feats)
            nfeats = torch.where(flip.view(-1, 1, 1, 1).to(feats.device), nfeats.flip(-1), nfeats)
        return feats, nfeats

    def _proximal(self, proximal) -> Tensor | None:
        if proximal is None or not proximal[1]:
            return None
        anchor, mu = proximal
        params = self._parameters()
        total = sum(((p - torch.as_tensor(np.asarray(anchor[k])).to(p)) ** 2).sum() for k, p in params.items())
        return 0.5 * float(mu) * total

    def losses(self, feats: Tensor, neighbour_feats: Tensor) -> tuple[Tensor, Tensor]:
        """One step's (objective, centroids' loss) on features (B, C, h, w) and each one's neighbour's (B, C, h,
        w): both through the head, the objective on the targets and the codes, the probe on detached codes.
        Draws (dropout, sampled points) come from torch's global generator."""
        codes, neighbour_codes = self.head(feats), self.head(neighbour_feats)
        if self.target is not None:
            feats, neighbour_feats = self.target(feats), self.target(neighbour_feats)
        return self.objective(feats, codes, neighbour_feats, neighbour_codes), self.probe.loss(codes.detach())

    def fit(self, steps: int, *, seed: int = 0, proximal: tuple[dict, float] | None = None) -> dict[str, float]:
        """``steps`` optimiser steps; ``proximal``: (the global state, mu) for FedProx's term, or None.
        Returns the mean losses: ``loss``, ``objective``, ``probe``, ``proximal``."""
        generator = torch.Generator().manual_seed(int(seed))
        optimizer = torch.optim.Adam([{"params": list(self.head.parameters()), "lr": self.lr_head},
                                      {"params": [self.probe.centroids], "lr": self.lr_probe}])
        sums = {"loss": 0.0, "objective": 0.0, "probe": 0.0, "proximal": 0.0}
        self.head.train()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(seed))
            for _ in range(steps):
                objective, probe = self.losses(*self._batch(generator))
                loss = objective + probe
                prox = self._proximal(proximal)
                if prox is not None:
                    loss = loss + prox
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for key, value in (("loss", loss), ("objective", objective), ("probe", probe), ("proximal", prox)):
                    sums[key] += float(value.detach()) if value is not None else 0.0
        self.head.eval()
        return {k: v / max(steps, 1) for k, v in sums.items()}

    # -- prediction and scoring --------------------------------------------------------------------
    def segmenter(self) -> StegoSegmenter:
        """The current model as a harness method (shares the learner's encoder and head; a copy of the
        centroids)."""
        return StegoSegmenter(self.encoder, self.head, self.probe.centroids, layer=self.layer)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> cluster ids (B, H, W) int64."""
        self.head.eval()
        return self.segmenter()(images.to(self.device))

    @torch.no_grad()
    def probe_loss(self) -> float:
        """The centroids' loss over every banked image: a label-free figure of the model on this client."""
        self.head.eval()
        losses = [self.probe.loss(self.head(self.bank.feats[i:i + 32])) for i in range(0, len(self.bank), 32)]
        weights = [min(32, len(self.bank) - i) for i in range(0, len(self.bank), 32)]
        return float(sum(float(v) * w for v, w in zip(losses, weights, strict=True)) / len(self.bank))

    def evaluate(self, dataset, protocol, *, device: str | torch.device | None = None) -> dict[str, float]:
        """Hungarian-matched ``miou`` and ``acc`` on ``dataset`` (images and masks) through the harness."""
        from leafseg.eval.harness import evaluate

        self.head.eval()
        report = evaluate(self.segmenter(), dataset, protocol, progress=False, device=device or self.device,
                          method_name="fuss")
        return {"miou": report.miou, "acc": report.acc}
