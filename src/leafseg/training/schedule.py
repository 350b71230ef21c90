"""Learning-rate schedules: polynomial decay per iteration (UniMatch V2: power 0.9, no warmup).

``PolyLR`` is a ``torch.optim.lr_scheduler.LRScheduler``: each param group's lr at iteration t
(0-based, ``scheduler.step()`` once per iteration) is ``base_lr * (1 - t / total_iters) ** power``,
so groups keep their ratio (the head's 40x the encoder's). Its state dict holds only numbers, so
it round-trips through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler


def poly_lr(base_lr: float, step: int, total_iters: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total_iters) ** power``, clamped at 0 past the end."""
    frac = min(max(step, 0) / max(total_iters, 1), 1.0)
    return base_lr * (1.0 - frac) ** power


class PolyLR(LRScheduler):
    """Polynomial decay of every param group of ``optimizer`` over ``total_iters`` iterations."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_iters: int, power: float = 0.9,
                 last_epoch: int = -1):
        if total_iters < 1:
            raise ValueError(f"total_iters must be positive, got {total_iters}")
        self.total_iters, self.power = int(total_iters), float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [poly_lr(base, self.last_epoch, self.total_iters, self.power) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()
