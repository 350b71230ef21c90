"""Supervised segmentation losses: cross-entropy with an ignore label, and online hard example mining.

``OhemCrossEntropy`` follows the probability-threshold OHEM of the semi-supervised segmentation
literature (CPS, UniMatch, UniMatch V2 on Cityscapes): among the labelled pixels, keep those
whose predicted probability of the true class is at most a threshold, where the threshold is
raised to the ``min_kept``-th smallest such probability when fewer pixels would be kept; if
there are no more than ``min_kept`` labelled pixels, keep them all. The loss is the mean
cross-entropy over the kept pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over pixels whose target is not ``ignore_index``.

    logits: (B, K, H, W) (computed in float32); target: (B, H, W) int64. Returns a scalar
    (0 with a gradient when every pixel is ignored).
    """
    valid = target != ignore_index
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss / valid.sum().clamp_min(1)


class CrossEntropy(nn.Module):
    """``cross_entropy`` as a module: forward(logits (B, K, H, W), target (B, H, W)) -> scalar."""

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.ignore_index)


def ohem_keep(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int,
              ignore_index: int = 255) -> torch.Tensor:
    """Boolean (B, H, W): the labelled pixels OHEM keeps (see the module docstring)."""
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0 or num_valid <= min_kept:
        return valid
    with torch.no_grad():
        prob = logits.float().softmax(dim=1)
        safe = torch.where(valid, target, torch.zeros_like(target))
        p_true = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
        p_true = torch.where(valid, p_true, torch.ones_like(p_true))
        threshold = torch.tensor(float(thresh), device=p_true.device)
        if min_kept > 0:
            kth = torch.kthvalue(p_true.flatten(), min(min_kept, p_true.numel())).values
            threshold = torch.maximum(threshold, kth)
        return valid & (p_true <= threshold)


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over hard pixels (Cityscapes in UniMatch V2: thresh 0.7, min_kept 200000).

    forward(logits (B, K, H, W), target (B, H, W) int64) -> scalar mean over the kept pixels.
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 200_000, ignore_index: int = 255):
        super().__init__()
        self.thresh, self.min_kept, self.ignore_index = float(thresh), int(min_kept), int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = ohem_keep(logits, target, self.thresh, self.min_kept, self.ignore_index)
        hard = torch.where(keep, target, torch.full_like(target, self.ignore_index))
        return cross_entropy(logits, hard, self.ignore_index)


LOSSES = {"ce": CrossEntropy, "ohem": OhemCrossEntropy}


def build_loss(name: str, **kwargs) -> nn.Module:
    """A supervised loss by name: "ce" (ignore_index) or "ohem" (thresh, min_kept, ignore_index)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
