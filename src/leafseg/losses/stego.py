"""STEGO's correspondence distillation loss: codes should correlate where frozen features correlate.

For two images, sample an S x S array of points in each (``feature_samples`` = S, uniform random positions,
bilinear reads). Between every point p of the first and q of the second::

    F[p, q] = cos(f_p, f_q)                 backbone features (frozen, no gradient)
    F'[p, q] = F[p, q] - mean_q F[p, q] + mean F      "centering" (STEGO's ``pointwise``): each point's row
                                                       of F loses its own mean; the mean of F over the whole
                                                       batch of pairs is kept
    S[p, q] = cos(c_p, c_q)                 head codes
    L[p, q] = -max(S[p, q], 0) * (F'[p, q] - b)        (``zero_clamp``; without it S is not clamped)

and the pair's loss is the mean of L. Three pairings, each with its weight lambda and shift b: an image with
itself ("self"), with one of its k nearest neighbours in the dataset ("knn"), and with random other images
of the batch ("random", ``negatives`` draws)::

    loss = lambda_self L_self + lambda_knn L_knn + lambda_random L_random

    loss_fn = CorrespondenceLoss.from_preset("cocostuff27")
    loss = loss_fn(feats, codes, knn_feats, knn_codes)   # (B, C, h, w) and (B, D, h, w) each -> scalar
    out = loss_fn.terms(feats, codes, knn_feats, knn_codes)   # out.loss, out.self, out.knn, out.random

``PRESETS`` holds STEGO's published (lambda, b) per dataset and backbone, from the authors' released training
configurations (docs/stego.md names them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PRESETS", "CorrespondenceLoss", "CorrespondenceOutput", "CorrespondencePreset", "correlation_loss",
           "feature_correlation", "random_points", "random_others", "sample_points"]


@dataclass(frozen=True)
class CorrespondencePreset:
    """(lambda, b) of the three pairings, and the backbone the values were tuned for."""

    self_weight: float
    self_shift: float
    knn_weight: float
    knn_shift: float
    random_weight: float
    random_shift: float
    backbone: str

    def values(self) -> dict[str, float]:
        """The six loss values as keyword arguments of :class:`CorrespondenceLoss`."""
        return {k: getattr(self, k) for k in ("self_weight", "self_shift", "knn_weight", "knn_shift",
                                               "random_weight", "random_shift")}


PRESETS: dict[str, CorrespondencePreset] = {
    # COCO-Stuff-27 with DINO ViT-B/8: the setting of the paper's 28.2 mIoU (and of FUSS's COCO-Stuff runs)
    "cocostuff27": CorrespondencePreset(0.1, 0.12, 1.0, 0.2, 0.1538476246415498, 1.0, "dino_vitb8"),
    # COCO-Stuff-27 with DINO ViT-S/8 (the paper's 24.5 mIoU row)
    "cocostuff27_vits8": CorrespondencePreset(0.67, 0.08, 0.25, 0.02, 0.63, 0.66, "dino_vits8"),
    # Cityscapes-27 with DINO ViT-B/8 (the paper's 21.0 mIoU; also FUSS's Cityscapes runs)
    "cityscapes27": CorrespondencePreset(1.0, 0.45828472207, 0.577453483136995, 0.1754346515479633,
                                         0.9058762625226623, 0.31361241889448443, "dino_vitb8"),
    # Potsdam-3 with DINO ViT-S/8
    "potsdam3": CorrespondencePreset(0.67, 0.08, 0.25, 0.02, 0.63, 0.46, "dino_vits8"),
}


def feature_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Cosine between every position of ``a`` and every position of ``b``, image by image.

    a (B, C, H, W), b (B, C, I, J) -> (B, H, W, I, J)."""
    return torch.einsum("bchw,bcij->bhwij", _unit(a), _unit(b))


def random_points(batch: int, samples: int, device=None, generator: torch.Generator | None = None) -> Tensor:
    """(B, S, S, 2) uniform random (x, y) positions in [-1, 1] (``grid_sample``'s coordinates)."""
    return torch.rand(batch, samples, samples, 2, device=device, generator=generator) * 2 - 1


def sample_points(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear reads of ``maps`` (B, C, h, w) at ``points`` (B, S, S, 2) -> (B, C, S, S).

    -1 and 1 are the centres of the first and last rows and columns (``align_corners=True``); points outside
    read the border."""
    return F.grid_sample(maps, points, mode="bilinear", padding_mode="border", align_corners=True)


def correlation_loss(feats_a: Tensor, feats_b: Tensor, codes_a: Tensor, codes_b: Tensor, shift: float, *,
                     centering: bool = True, zero_clamp: bool = True) -> tuple[Tensor, Tensor]:
    """The loss of one pairing, point by point (see the module docstring).

    feats (B, C, H, W) and (B, C, I, J); codes (B, D, H, W) and (B, D, I, J) -> (L (B, H, W, I, J), the code
    correlation S (B, H, W, I, J)). The features carry no gradient."""
    with torch.no_grad():
        fa, fb = _unit(feats_a.detach().float()), _unit(feats_b.detach().float())
    return _unit_pair_loss(fa, fb, _unit(codes_a), _unit(codes_b), shift, centering, zero_clamp)


def _unit(maps: Tensor) -> Tensor:
    return F.normalize(maps, dim=1, eps=1e-10)


def _unit_pair_loss(fa: Tensor, fb: Tensor, ca: Tensor, cb: Tensor, shift: float, centering: bool,
                    zero_clamp: bool) -> tuple[Tensor, Tensor]:
    """:func:`correlation_loss` of unit-length features and codes."""
    with torch.no_grad():
        fd = torch.einsum("bchw,bcij->bhwij", fa, fb)
        if centering:
            fd = fd - fd.mean(dim=(3, 4), keepdim=True) + fd.mean()
    cd = torch.einsum("bchw,bcij->bhwij", ca, cb)
    clamped = cd.clamp(min=0.0) if zero_clamp else cd
    return -clamped * (fd - shift), cd


def random_others(n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
    """(n,) int64: for each image a random other image of the batch (STEGO's draw: a random permutation whose
    fixed points move to the next index). n >= 2."""
    perm = torch.randperm(n, device=device, generator=generator)
    own = perm == torch.arange(n, device=device)
    return (perm + own.long()) % n


@dataclass
class CorrespondenceOutput:
    """loss: the weighted sum; self / knn / random: each pairing's mean loss; *_corr: the mean code
    correlation of each pairing (detached, for the logs)."""

    loss: Tensor
    self: Tensor
    knn: Tensor
    random: Tensor
    self_corr: Tensor
    knn_corr: Tensor
    random_corr: Tensor

    def parts(self) -> dict[str, Tensor]:
        """The detached parts to log."""
        return {"loss_self": self.self.detach(), "loss_knn": self.knn.detach(), "loss_random": self.random.detach(),
                "corr_self": self.self_corr, "corr_knn": self.knn_corr, "corr_random": self.random_corr}


class CorrespondenceLoss(nn.Module):
    """The three-pairing correspondence loss (no parameters).

    forward(feats (B, C, h, w), codes (B, D, h, w), knn_feats, knn_codes (the same shapes: each image's
    neighbour)) -> the scalar loss; ``terms`` (the same arguments, and ``points=None, generator=None``) ->
    :class:`CorrespondenceOutput`, the loss with each pairing's part. ``points`` = (points of the images,
    points of the partners), each (B, S, S, 2), replaces the random draw (tests, custom sampling);
    ``generator`` draws the points and the random partners (default: the global generator).

    Args:
        self_weight, self_shift, knn_weight, knn_shift, random_weight, random_shift: lambda and b per pairing.
        feature_samples: S, points per side of the sampled array (STEGO: 11, so 121 points per image).
        negatives: random-partner draws per step (STEGO: 5), all averaged into L_random.
        centering: remove each point's mean feature correlation (STEGO's ``pointwise``).
        zero_clamp: clamp the code correlation at 0 (STEGO's ``zero_clamp``).
    """

    def __init__(self, *, self_weight: float, self_shift: float, knn_weight: float, knn_shift: float,
                 random_weight: float, random_shift: float, feature_samples: int = 11, negatives: int = 5,
                 centering: bool = True, zero_clamp: bool = True):
        super().__init__()
        if feature_samples < 1 or negatives < 0:
            raise ValueError(f"need feature_samples >= 1 and negatives >= 0, got {feature_samples} and {negatives}")
        self.weights = {"self": float(self_weight), "knn": float(knn_weight), "random": float(random_weight)}
        self.shifts = {"self": float(self_shift), "knn": float(knn_shift), "random": float(random_shift)}
        self.feature_samples, self.negatives = int(feature_samples), int(negatives)
        self.centering, self.zero_clamp = bool(centering), bool(zero_clamp)

    @classmethod
    def from_preset(cls, name: str, **changes) -> CorrespondenceLoss:
        """The loss with preset ``name``'s six values (``changes`` replace any of them or set the others)."""
        if name not in PRESETS:
            raise ValueError(f"unknown STEGO preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name].values(), **changes})

    def extra_repr(self) -> str:
        return (f"weights={self.weights}, shifts={self.shifts}, feature_samples={self.feature_samples}, "
                f"negatives={self.negatives}, centering={self.centering}, zero_clamp={self.zero_clamp}")

    def _pair(self, name: str, fa, fb, ca, cb) -> tuple[Tensor, Tensor]:
        loss, cd = _unit_pair_loss(fa, fb, ca, cb, self.shifts[name], self.centering, self.zero_clamp)
        return loss.mean(), cd.detach().mean()

    def forward(self, feats: Tensor, codes: Tensor, knn_feats: Tensor, knn_codes: Tensor) -> Tensor:
        return self.terms(feats, codes, knn_feats, knn_codes).loss

    def terms(self, feats: Tensor, codes: Tensor, knn_feats: Tensor, knn_codes: Tensor,
              points: tuple[Tensor, Tensor] | None = None,
              generator: torch.Generator | None = None) -> CorrespondenceOutput:
        b = feats.shape[0]
        if self.negatives and b < 2:
            raise ValueError("random partners need a batch of at least 2 images (or negatives=0)")
        if points is None:
            points = tuple(random_points(b, self.feature_samples, feats.device, generator) for _ in range(2))
        p1, p2 = points
        with torch.no_grad():  # unit features at the points (frozen: no gradient)
            f1 = _unit(sample_points(feats.detach().float(), p1))
            f2, fr = (_unit(sample_points(m.detach().float(), p2)) for m in (knn_feats, feats))
        c1, c2 = _unit(sample_points(codes, p1)), _unit(sample_points(knn_codes, p2))
        own, own_corr = self._pair("self", f1, f1, c1, c1)
        knn, knn_corr = self._pair("knn", f1, f2, c1, c2)
        rand, rand_corr = torch.zeros((), device=feats.device), torch.zeros((), device=feats.device)
        if self.negatives:
            cr = _unit(sample_points(codes, p2))  # every image at the partners' points; a draw permutes them
            for _ in range(self.negatives):
                other = random_others(b, feats.device, generator)
                loss, corr = self._pair("random", f1, fr[other], c1, cr[other])
                rand, rand_corr = rand + loss / self.negatives, rand_corr + corr / self.negatives
        total = self.weights["self"] * own + self.weights["knn"] * knn + self.weights["random"] * rand
        return CorrespondenceOutput(total, own, knn, rand, own_corr, knn_corr, rand_corr)
