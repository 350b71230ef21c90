"""DINO's self-distillation loss (Caron et al. 2021, equation 3 and section 3.1).

The teacher's output on each global view, centred and sharpened, is a target distribution; the student's
output on every other view (global and local) is trained toward it by cross-entropy:

    P_t = softmax((g_t - c) / tau_t),   log P_s = log_softmax(g_s / tau_s)
    loss = mean over pairs (t, s) with s != t of mean over the batch of  -sum_k P_t[k] log P_s[k]

where t runs over the teacher's global views and s over all the student's views. The centre ``c`` is an
exponential moving average of the teacher's raw outputs over the batch (every process's batch):
``c <- m c + (1 - m) mean(g_t)`` (``center_momentum`` m = 0.9), updated after the loss is computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DinoLoss", "self_distillation"]


def self_distillation(student: Tensor, teacher: Tensor, center: Tensor, *, student_temp: float,
                      teacher_temp: float) -> Tensor:
    """student: (V, B, K) logits of V views; teacher: (G, B, K) logits of the first G views (the global ones,
    in the same order); center: (K,) or (1, K). Returns the mean cross-entropy over the pairs of different
    views, a scalar."""
    if student.ndim != 3 or teacher.ndim != 3 or teacher.shape[0] > student.shape[0]:
        raise ValueError(f"expected student (V, B, K) and teacher (G, B, K) with G <= V, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    targets = F.softmax((teacher - center.reshape(1, 1, -1)) / teacher_temp, dim=-1).detach()
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    total, pairs = student.new_zeros(()), 0
    for t in range(teacher.shape[0]):
        for s in range(student.shape[0]):
            if s == t:
                continue
            total = total + (-(targets[t] * log_probs[s]).sum(-1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("self-distillation needs at least two views")
    return total / pairs


class DinoLoss(nn.Module):
    """The loss with its centre (a persistent (1, out_dim) buffer, saved with the model's state).

    forward(student (V, B, K), teacher (G, B, K), teacher_temp) -> scalar; then ``update_center(teacher)``.
    """

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.center_momentum = float(student_temp), float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: Tensor, teacher: Tensor, teacher_temp: float) -> Tensor:
        return self_distillation(student, teacher, self.center, student_temp=self.student_temp,
                                 teacher_temp=teacher_temp)

    @torch.no_grad()
    def update_center(self, teacher: Tensor) -> None:
        """teacher (G, B, K) raw logits: the centre moves toward their mean over views, batch and processes."""
        from leafseg.training.distributed import all_reduce_mean

        batch_center = all_reduce_mean(teacher.float().mean(dim=(0, 1)))
        self.center.mul_(self.center_momentum).add_(batch_center.reshape(1, -1), alpha=1 - self.center_momentum)
