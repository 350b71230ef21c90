"""DINO's projection head (Caron et al. 2021, section 3.1 and the released architecture it describes): a
3-layer MLP (hidden width ``hidden_dim``, GELU) down to a ``bottleneck_dim`` code, L2-normalised, then a
weight-normalised linear layer onto ``out_dim`` prototypes, its norm fixed to 1 (the paper's
``norm_last_layer``), so a logit is the cosine of the code and a prototype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DinoHead"]


class DinoHead(nn.Module):
    """forward(x (N, in_dim)) -> logits (N, out_dim): cosines of the normalised code and the prototypes.

    ``prototypes`` (out_dim, bottleneck_dim) is the weight-normalised layer's direction; its rows are
    normalised at every forward (a weight norm whose gain is frozen at 1). The MLP's linear layers start
    from a truncated normal of standard deviation 0.02 with zero biases.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3):
        super().__init__()
        if layers < 1 or min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(f"need layers >= 1 and positive widths, got {layers}, {in_dim}, {out_dim}, "
                             f"{hidden_dim}, {bottleneck_dim}")
        widths = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i in range(layers):
            mlp.append(nn.Linear(widths[i], widths[i + 1]))
            if i < layers - 1:
                mlp.append(nn.GELU())
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        self.out_dim = int(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        code = F.normalize(self.mlp(x), dim=-1)
        return code @ F.normalize(self.prototypes, dim=-1).t()
