"""Exponential moving average (EMA) teacher with a ramped momentum.

UniMatch V2's teacher: a copy of the student in eval mode; after every optimiser step, at
iteration t (0-based), every parameter and floating buffer becomes
``m * teacher + (1 - m) * student`` (non-persistent buffers, such as normalisation constants,
are copied) with ``m = min(1 - 1 / (t + 1), max_momentum)``
(``max_momentum`` 0.996). At t = 0 the momentum is 0, so the teacher starts as the student
after its first step; the momentum then ramps up as 0, 1/2, 2/3, ... until it reaches 0.996.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_momentum(step: int, max_momentum: float = 0.996) -> float:
    """``min(1 - 1 / (step + 1), max_momentum)`` for a 0-based iteration ``step``."""
    return min(1.0 - 1.0 / (step + 1), max_momentum)


class ModelEMA:
    """An EMA copy of a model.

    ``ema = ModelEMA(student)``; after each optimiser step ``ema.update(student, step)``;
    ``ema.module`` is the teacher (eval mode, no gradients). ``state_dict`` /
    ``load_state_dict`` are the teacher's.
    """

    def __init__(self, model: nn.Module, max_momentum: float = 0.996):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.max_momentum = float(max_momentum)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Average ``model`` into the teacher with the momentum of iteration ``step``; returns it."""
        m = ema_momentum(step, self.max_momentum)
        src = dict(model.named_parameters())
        for name, p in self.module.named_parameters():
            p.mul_(m).add_(src[name].detach().to(p.dtype), alpha=1.0 - m)
        bufs, persistent = dict(model.named_buffers()), set(model.state_dict())
        for name, b in self.module.named_buffers():
            if name not in bufs:
                continue
            if b.is_floating_point() and name in persistent:
                b.mul_(m).add_(bufs[name].detach().to(b.dtype), alpha=1.0 - m)
            else:
                b.copy_(bufs[name])
        return m

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
