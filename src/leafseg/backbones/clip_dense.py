"""One shared hook for training-free dense CLIP: rebuild CLIP's last vision block under another attention.

MaskCLIP, SCLIP, ClearCLIP, NACLIP and ProxyCLIP all keep CLIP frozen and change only its last block:
which tokens a patch attends to, and whether the residual and the MLP are kept. :func:`last_block` runs
that block from its own weights with a given attention rule::

    tokens, grid = clip.tokens_before_last_block(images)          # (B, 1 + R + N, C)
    out, grid = last_block(clip, tokens, grid, rule, residual=False, ffn=False)
    emb = clip.project_tokens(out)                                 # (B, N, E)

A rule maps the block's per-head queries, keys and values (:class:`BlockHeads`) to attention weights.
``rule=None`` lets every token attend only to itself (MaskCLIP; exactly ``value_branch``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["BlockHeads", "Mix", "last_block", "softmax_rows"]


@dataclass
class BlockHeads:
    """Per-head projections of the tokens entering CLIP's last block (after its first LayerNorm).

    q, k, v: (B, H, T, d) with T = ``prefix`` + h*w tokens ordered [CLS, registers, patches] and the
        patches row-major on ``grid`` = (h, w); head ``i`` holds channels ``i*d:(i+1)*d`` of the
        block's q/k/v linear layers (biases included).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    prefix: int
    grid: tuple[int, int]

    @property
    def scale(self) -> float:
        """CLIP's own attention scale, head_dim ** -0.5."""
        return self.q.shape[-1] ** -0.5

    def patches(self, x: Tensor) -> Tensor:
        """(B, H, T, ...) -> (B, H, N, ...): the patch rows only."""
        return x[:, :, self.prefix :]


class Mix(NamedTuple):
    """What a rule may return instead of bare weights, when it mixes other values than the block's own.

    weights: (B, H or 1, N', S) attention of N' output tokens over S values.
    values: (B, H, S, d) the values mixed.
    grid: (h', w') with h' * w' = N', the grid of the output tokens.
    """

    weights: Tensor
    values: Tensor
    grid: tuple[int, int]


Rule = Callable[[BlockHeads], "Tensor | Mix"]


def softmax_rows(logits: Tensor) -> Tensor:
    """(..., S) -> (..., S): softmax over the last axis in float32, so bf16 inputs keep their precision."""
    return torch.softmax(logits.float(), dim=-1)


def block_heads(encoder, tokens: Tensor, grid: tuple[int, int]) -> BlockHeads:
    """tokens (B, T, C) entering the last block -> :class:`BlockHeads` of that block (gradients flow)."""
    layer = encoder.blocks[-1]
    x = layer.layer_norm1(tokens)
    heads = layer.self_attn.num_heads
    b, t, c = x.shape

    def split(linear) -> Tensor:
        return linear(x).view(b, t, heads, c // heads).transpose(1, 2)

    q_proj, k_proj, v_proj = encoder._qkv(layer)
    return BlockHeads(split(q_proj), split(k_proj), split(v_proj), t - grid[0] * grid[1], tuple(grid))


def _mix(heads: BlockHeads, out) -> tuple[Tensor, tuple[int, int]]:
    """A rule's output -> mixed values (B, N', H*d) on the output grid."""
    if isinstance(out, Mix):
        weights, values, grid = out
    else:
        weights, grid = out, heads.grid
        n, t = heads.grid[0] * heads.grid[1], heads.v.shape[2]
        if weights.shape[-1] not in (n, t):
            raise ValueError(f"attention weights over {weights.shape[-1]} tokens; expected {t} (all) or {n} (patches)")
        values = heads.v if weights.shape[-1] == t else heads.patches(heads.v)
        if weights.shape[-2] == t:  # a rule that returns every query row: keep the patch rows
            weights = weights[..., heads.prefix :, :]
    if weights.shape[-2] != grid[0] * grid[1]:
        raise ValueError(f"attention weights have {weights.shape[-2]} rows for a {grid[0]}x{grid[1]} grid")
    mixed = weights.to(values.dtype) @ values  # (B, H, N', d)
    return mixed.transpose(1, 2).flatten(2), tuple(grid)


def last_block(encoder, tokens: Tensor, grid: tuple[int, int], rule: Rule | None = None, *,
               residual: bool = True, ffn: bool = True) -> tuple[Tensor, tuple[int, int]]:
    """CLIP's last vision block, rebuilt from its weights with attention from ``rule``.

    encoder: a :class:`~leafseg.backbones.ClipEncoder`.
    tokens: (B, 1 + R + N, C) entering the last block, as ``tokens_before_last_block`` returns them;
        grid: (h, w) with h*w = N.
    rule: ``rule(heads) -> weights`` (B, H or 1, N or T, T or N): rows are output patches (all T query
        rows are accepted and cut to the patches), columns the tokens whose values are mixed (all T, or
        the N patches); or a :class:`Mix` with its own values and output grid. None: every token attends
        only to itself, ``out_proj(v)`` (MaskCLIP; exactly :meth:`ClipEncoder.value_branch`).
    residual: add the patch tokens entering the block; ffn: then add the block's MLP branch.
    Returns ``(patches, grid)``: (B, N', C) tokens without the final LayerNorm, ready for
    ``project_tokens``, and their grid (h', w') (the input grid unless the rule's :class:`Mix` moves it).
    """
    x = tokens[:, tokens.shape[1] - grid[0] * grid[1] :]  # the patches entering the block, (B, N, C)
    if rule is None:
        out, out_grid = encoder.value_branch(x, block=-1), tuple(grid)
    else:
        heads = block_heads(encoder, tokens, grid)
        mixed, out_grid = _mix(heads, rule(heads))
        out = encoder.blocks[-1].self_attn.out_proj(mixed)
    if residual:
        if out_grid != tuple(grid):
            raise ValueError(f"the residual needs the output on the input grid {grid}, got {out_grid}")
        out = out + x
    if ffn:
        out = out + encoder.mlp_branch(out, block=-1)
    return out, out_grid
