"""Learning-rate schedules, as ``torch.optim.lr_scheduler.LambdaLR`` over closed-form factors: each
param group's lr at iteration t (0-based, ``scheduler.step()`` once per iteration) is its initial lr
times the factor, so groups keep their ratio (UniMatch V2's head at 40x the encoder, S-Seg's text
encoder at ``text_lr_scale``). Their state dicts hold only numbers, so they round-trip through
``torch.load(weights_only=True)``.

The factors are ``functools.partial`` objects, which LambdaLR's state dict stores as empty
mappings.

* :func:`poly_schedule`: ``(1 - t / total) ** power`` (UniMatch V2: power 0.9, no warm-up).
* :func:`warmup_cosine_schedule`: linear warm-up ``(t + 1) / warmup``, then cosine decay to ``min_ratio``
  (S-Seg).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def poly_factor(step: int, total_iters: int, power: float = 0.9) -> float:
    """``(1 - step / total_iters) ** power``, clamped at 0 past the end."""
    frac = min(max(step, 0) / max(total_iters, 1), 1.0)
    return (1.0 - frac) ** power


def poly_lr(base_lr: float, step: int, total_iters: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total_iters) ** power``, clamped at 0 past the end."""
    return base_lr * poly_factor(step, total_iters, power)


def warmup_cosine_factor(step: int, total_iters: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up for ``warmup`` iterations, then cosine decay from 1 to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total_iters - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


def poly_schedule(optimizer: torch.optim.Optimizer, total_iters: int, power: float = 0.9) -> LambdaLR:
    """Polynomial decay of every param group over ``total_iters`` iterations."""
    if total_iters < 1:
        raise ValueError(f"total_iters must be positive, got {total_iters}")
    return LambdaLR(optimizer, partial(poly_factor, total_iters=int(total_iters), power=float(power)))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total_iters: int, warmup: int,
                           min_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``min_ratio`` of each group's initial lr."""
    if total_iters < 1 or warmup < 0:
        raise ValueError(f"need total_iters >= 1 and warmup >= 0, got {total_iters} and {warmup}")
    return LambdaLR(optimizer, partial(warmup_cosine_factor, total_iters=int(total_iters), warmup=int(warmup),
                                       min_ratio=float(min_ratio)))
