"""Symmetric image-text contrastive loss (CLIP's InfoNCE) with a learnable temperature.

For L2-normalised image embeddings x_i and text embeddings y_i of a batch of N pairs and a
temperature sigma (S-Seg eqs. 2-3)::

    L_I->T = -1/N sum_i log softmax_j(x_i . y_j / sigma)[i]
    L_T->I = -1/N sum_i log softmax_j(y_i . x_j / sigma)[i]
    L = L_I->T + L_T->I

The temperature is learned as ``logit_scale = log(1 / sigma)`` (initialised at 1/0.07 and clamped
at 100, as in CLIP). Under ``torch.distributed`` the negatives come from every rank: each rank
gathers all embeddings with :func:`all_gather_with_grad`, whose backward sums the gradients of
every rank's loss into the local slice, so the averaged update equals that of one big batch.
Each rank scores its own rows against all columns (``local_loss``), which costs O(N_local * N).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from leafseg.errors import ConfigError


class _AllGather(torch.autograd.Function):
    """all_gather along dim 0 whose backward all-reduces the gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
        sizes = [int(s) for s in sizes]
        padded = x.new_zeros(max(sizes), *x.shape[1:])
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x (n_local, D) -> (all rows of every rank in rank order (N, D), offset of this rank's rows).

    Gradients flow back to every rank's own rows. Ranks may hold different row counts. Without a
    process group the input is returned with offset 0.
    """
    rank, world = distributed_world()
    if world == 1:
        return x, 0
    out = _AllGather.apply(x)
    sizes = torch.zeros(world, dtype=torch.long, device=x.device)
    sizes[rank] = x.shape[0]
    dist.all_reduce(sizes)
    return out, int(sizes[:rank].sum())


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
                     gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings.

    image, text: (n, E) embeddings of n pairs (normalised here). logit_scale: 1/temperature
    (a tensor to learn it). gather: take negatives from every rank when distributed.
    Returns the scalar L_I->T + L_T->I, each a mean over this rank's pairs.
    """
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"need (n, E) image and text embeddings of one shape, got {tuple(image.shape)} "
                         f"and {tuple(text.shape)}")
    x = F.normalize(image.float(), dim=-1)
    y = F.normalize(text.float(), dim=-1)
    if gather:
        all_x, offset = all_gather_with_grad(x)
        all_y, _ = all_gather_with_grad(y)
    else:
        all_x, all_y, offset = x, y, 0
    labels = torch.arange(x.shape[0], device=x.device) + offset
    logits_i2t = logit_scale * x @ all_y.t()  # (n, N)
    logits_t2i = logit_scale * y @ all_x.t()  # (n, N)
    return F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)


class LearnableTemperature(nn.Module):
    """A learnable temperature, CLIP's way: ``logit_scale`` (a parameter) is log(1/sigma), initialised at
    log(1/``init_temperature``); ``scale`` = exp(logit_scale) clamped at ``max_scale`` multiplies the
    similarities. The base of the contrastive losses that learn their temperature."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        if not init_temperature > 0 or not max_scale > 0:
            raise ConfigError(f"the temperature and the largest scale must be positive, got "
                              f"init_temperature={init_temperature}, max_scale={max_scale}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_scale = float(max_scale)

    @property
    def scale(self) -> torch.Tensor:
        """1 / temperature, a scalar tensor (differentiable)."""
        return self.logit_scale.exp().clamp(max=self.max_scale)


class ContrastiveLoss(LearnableTemperature):
    """``contrastive_loss`` with its learnable temperature (see :class:`LearnableTemperature`).
    forward(image (n, E), text (n, E)) -> scalar.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, gather: bool = True):
        super().__init__(init_temperature, max_scale)
        self.gather = bool(gather)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(image, text, self.scale, gather=self.gather)


def multi_label_loss(image: torch.Tensor, nouns: torch.Tensor, targets: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """GroupViT's multi-label image-text contrastive loss over a batch's noun prompts.

    image: (B, E) embeddings; nouns: (U, E) embeddings of the distinct noun prompts of the batch;
    targets: (B, U) bool, True where image b's caption contains noun u. Image to text: soft cross
    entropy over the U prompts with the image's nouns as equally weighted positives; text to image:
    the same over the B images for every prompt. Images without a noun add nothing. Negatives come
    from this process only. Returns the scalar sum of the two directions (0 when U = 0).
    """
    if image.ndim != 2 or nouns.ndim != 2 or targets.shape != (image.shape[0], nouns.shape[0]):
        raise ValueError(f"need image (B, E), nouns (U, E) and targets (B, U); got {tuple(image.shape)}, "
                         f"{tuple(nouns.shape)}, {tuple(targets.shape)}")
    if nouns.shape[0] == 0 or not bool(targets.any()):
        return image.sum() * 0.0
    logits = logit_scale * F.normalize(image.float(), dim=-1) @ F.normalize(nouns.float(), dim=-1).t()  # (B, U)
    t = targets.float()
    rows, cols = t.sum(1) > 0, t.sum(0) > 0
    i2t = -(t / t.sum(1, keepdim=True).clamp_min(1) * F.log_softmax(logits, dim=1)).sum(1)[rows].mean()
    t2i = -(t / t.sum(0, keepdim=True).clamp_min(1) * F.log_softmax(logits, dim=0)).sum(0)[cols].mean()
    return i2t + t2i
