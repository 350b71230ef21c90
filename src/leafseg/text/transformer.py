"""A causal text Transformer trained from scratch, pooled at the end-of-text token.

S-Seg's language model (section 4.1): 12 layers of width 256; GroupViT, which uses the same
numbers, adds 4 heads and a context of 77 tokens. Pre-LayerNorm blocks (CLIP's text tower
layout) with causal self-attention through PyTorch SDPA, learned position embeddings, a final
LayerNorm; the text feature is the final state at the end-of-text token. Because attention is
causal, padding after that token never influences it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalBlock(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)); x (T, L, W) -> (T, L, W)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, length, width = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(t, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(t, length, width))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Token ids -> one feature per text.

    forward(ids (T, L) int64, end_index (T,) int64 position of each row's end token) -> (T, width).
    L may be shorter than ``context_length`` (rows are padded only to the longest text).
    """

    def __init__(self, *, vocab_size: int, width: int = 256, layers: int = 12, heads: int = 4,
                 context_length: int = 77, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.width, self.context_length = int(width), int(context_length)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(CausalBlock(width, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self._init(layers)

    def _init(self, layers: int) -> None:
        """CLIP's initialisation: small embeddings, residual projections scaled by depth."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = self.width ** -0.5 * (2 * max(layers, 1)) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.qkv.weight, std=self.width ** -0.5)
            nn.init.normal_(block.proj.weight, std=proj_std)
            nn.init.normal_(block.mlp[0].weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)

    def forward(self, ids: torch.Tensor, end_index: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context length {self.context_length}")
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), end_index.to(x.device)]
