"""Bipartite matching of N predicted masks to K pseudo-masks, and the mask loss on matched pairs.

S-Seg (section 3.4) matches the N mask predictions of every image to its K class-agnostic
pseudo-masks with the Hungarian algorithm, using the mask losses alone as the cost (no class
cost). The N - K predictions left unmatched are not penalised at all (MaskFormer would push them
to "no object"). The loss on matched pairs is ``L_mask = dice_weight * Dice + focal_weight * Focal``
with weights 1 and 20.

The (B, N, K) cost of a whole batch is computed on the device with two batched matrix products;
only the small cost tensor goes to the host, where ``scipy.optimize.linear_sum_assignment``
solves each image's N x K problem.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


class Matching(NamedTuple):
    """Matched pairs of a batch, flattened: pair m is prediction ``pred[m]`` of image ``batch[m]``
    with target ``target[m]`` of the same image. Each a (M,) int64 tensor."""

    batch: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor


def region_targets(regions: torch.Tensor, num_regions: int, size: tuple[int, int] | None = None,
                   ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Region-id maps -> binary target masks.

    regions: (B, H, W) int64 ids in [0, K) (``ignore_index`` or any value outside [0, K): no region).
    size: (h, w) to resize to first (nearest), e.g. the predicted masks' resolution.
    Returns targets (B, K, h*w) float32 in {0, 1} and valid (B, K) bool (regions with any pixel).
    """
    if regions.ndim != 3:
        raise ValueError(f"regions must be (B, H, W), got shape {tuple(regions.shape)}")
    r = regions.long()
    if size is not None and tuple(size) != tuple(r.shape[-2:]):
        r = F.interpolate(r[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
    inside = (r >= 0) & (r < num_regions) & (r != ignore_index)
    onehot = F.one_hot(torch.where(inside, r, torch.full_like(r, num_regions)), num_regions + 1)
    targets = onehot[..., :num_regions].flatten(1, 2).transpose(1, 2).float()  # (B, K, h*w)
    return targets, targets.sum(-1) > 0


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss. logits (B, N, P), targets (B, K, P) in [0, 1] -> (B, N, K)."""
    p = logits.float().sigmoid()
    t = targets.float()
    inter = torch.bmm(p, t.transpose(1, 2))
    total = p.sum(-1)[:, :, None] + t.sum(-1)[:, None, :]
    return 1 - (2 * inter + 1) / (total + 1)


def focal_cost(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Pairwise sigmoid focal loss, mean over pixels. logits (B, N, P), targets (B, K, P) -> (B, N, K)."""
    x = logits.float()
    p = x.sigmoid()
    pos = (1 - p).pow(gamma) * F.softplus(-x)  # focal term of a pixel whose target is 1
    neg = p.pow(gamma) * F.softplus(x)  # ... whose target is 0
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    t = targets.float()
    return (torch.bmm(pos, t.transpose(1, 2)) + torch.bmm(neg, (1 - t).transpose(1, 2))) / x.shape[-1]


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of matched pairs. logits, targets (M, P) -> (M,)."""
    p = logits.float().sigmoid()
    t = targets.float()
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss of matched pairs, mean over pixels. logits, targets (M, P) -> (M,)."""
    x, t = logits.float(), targets.float()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.mean(-1)


@torch.no_grad()
def hungarian_masks(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None, *,
                    dice_weight: float = 1.0, focal_weight: float = 20.0, alpha: float = 0.25,
                    gamma: float = 2.0) -> Matching:
    """Minimum-cost assignment of predictions to targets, image by image.

    logits: (B, N, P) mask logits; targets: (B, K, P) binary masks; valid: (B, K) bool, targets to
    match (default all). Cost = dice_weight * dice + focal_weight * focal. Every valid target gets
    one distinct prediction (min(N, K_valid) pairs per image); the other predictions stay unmatched.
    Returns a :class:`Matching` on ``logits``' device.
    """
    b, n, p = logits.shape
    if targets.shape[0] != b or targets.shape[2] != p:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not line up")
    cost = dice_weight * dice_cost(logits, targets) + focal_weight * focal_cost(logits, targets, alpha, gamma)
    cost = cost.cpu()
    keep = valid.cpu() if valid is not None else torch.ones(b, targets.shape[1], dtype=torch.bool)
    batch, pred, target = [], [], []
    for i in range(b):
        cols = keep[i].nonzero().flatten()
        if cols.numel() == 0:
            continue
        rows, chosen = linear_sum_assignment(cost[i][:, cols].numpy())
        batch.append(torch.full((len(rows),), i, dtype=torch.long))
        pred.append(torch.as_tensor(rows, dtype=torch.long))
        target.append(cols[torch.as_tensor(chosen, dtype=torch.long)])
    if not batch:
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        return Matching(empty, empty, empty)
    return Matching(*(torch.cat(t).to(logits.device) for t in (batch, pred, target)))


def _num_masks(count: int, device) -> float:
    """Matched masks per process, averaged over ranks (MaskFormer's normaliser), at least 1."""
    n = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n), 1.0)


class MaskMatchingLoss(nn.Module):
    """Hungarian matching to pseudo-masks + dice/focal loss on the matched pairs.

    forward(mask_logits (B, N, h, w), regions (B, H, W) int64 region ids in [0, num_regions),
    aux: optional list of earlier decoder layers' (B, N, h, w) logits, timer: optional
    ``timer(name)`` context factory for "matching" and "losses") -> dict with ``loss``
    (scalar, summed over the final and aux layers), ``dice`` and ``focal`` (final layer, unweighted,
    detached) and ``matching`` (final layer's :class:`Matching`). Targets are resized (nearest) to
    the predictions' resolution. Unmatched predictions contribute nothing.
    """

    def __init__(self, num_regions: int = 8, *, dice_weight: float = 1.0, focal_weight: float = 20.0,
                 alpha: float = 0.25, gamma: float = 2.0, ignore_index: int = 255):
        super().__init__()
        self.num_regions, self.ignore_index = int(num_regions), int(ignore_index)
        self.dice_weight, self.focal_weight = float(dice_weight), float(focal_weight)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def match(self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> Matching:
        """logits (B, N, P), targets (B, K, P), valid (B, K) -> :class:`Matching`."""
        return hungarian_masks(logits, targets, valid, dice_weight=self.dice_weight,
                               focal_weight=self.focal_weight, alpha=self.alpha, gamma=self.gamma)

    def pair_loss(self, logits: torch.Tensor, targets: torch.Tensor, m: Matching,
                  num_masks: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weighted loss, dice, focal) of matched pairs; logits (B, N, P), targets (B, K, P)."""
        pred, tgt = logits[m.batch, m.pred], targets[m.batch, m.target]  # (M, P)
        dice = dice_loss(pred, tgt).sum() / num_masks
        focal = focal_loss(pred, tgt, self.alpha, self.gamma).sum() / num_masks
        return self.dice_weight * dice + self.focal_weight * focal, dice, focal

    def forward(self, mask_logits: torch.Tensor, regions: torch.Tensor, aux: list | None = None,
                timer=None) -> dict:
        timer = timer or (lambda name: contextlib.nullcontext())
        b, n, h, w = mask_logits.shape
        targets, valid = region_targets(regions.to(mask_logits.device), self.num_regions, (h, w),
                                        self.ignore_index)
        layers = [mask_logits.flatten(2)] + [a.flatten(2) for a in aux or []]
        with timer("matching"):
            matchings = [self.match(logits, targets, valid) for logits in layers]
        with timer("losses"):
            num_masks = _num_masks(len(matchings[0].batch), mask_logits.device)
            loss, dice, focal = self.pair_loss(layers[0], targets, matchings[0], num_masks)
            for logits, m in zip(layers[1:], matchings[1:], strict=True):
                loss = loss + self.pair_loss(logits, targets, m, num_masks)[0]
        return {"loss": loss, "dice": dice.detach(), "focal": focal.detach(), "matching": matchings[0]}
