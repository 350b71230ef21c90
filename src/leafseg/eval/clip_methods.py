"""Training-free dense CLIP over the one last-block hook (:func:`leafseg.backbones.clip_dense.last_block`).

A method keeps CLIP frozen and rebuilds only its last vision block: an attention rule, and whether the
block's residual and MLP are kept. The patch tokens then go through ``post_layernorm`` and the visual
projection and are compared by cosine with template-averaged text embeddings, times the protocol's
``logit_scale``. MaskCLIP's rule is the identity: each patch keeps its own value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leafseg.backbones.clip_dense import BlockHeads, Mix, last_block
from leafseg.errors import ConfigError
from leafseg.eval.prompts import text_embeddings
from leafseg.eval.segmenter import Segmenter

__all__ = ["DenseClip", "MaskClip"]

_CLIP_PARTS = ("encode_text", "project_tokens", "value_branch", "mlp_branch", "tokens_before_last_block", "blocks")


class DenseClip(Segmenter):
    """Base of the dense CLIP methods: text embeddings, the rebuilt last block, cosine logits.

    Subclasses set ``method`` (the name in messages) and implement :meth:`attention`.

    Args:
        encoder: a :class:`~leafseg.backbones.ClipEncoder` (any ``clip_*`` registry backbone).
        residual, ffn: keep the last block's residual / its MLP branch.
        scale: attention logit scale (temperature^-1); None takes CLIP's head_dim^-1/2.
    """

    method = "dense clip"

    def __init__(self, encoder: nn.Module, *, residual: bool, ffn: bool, scale: float | None = None):
        super().__init__()
        if not all(hasattr(encoder, a) for a in _CLIP_PARTS):
            raise ConfigError(f"{self.method} needs a CLIP backbone (--backbone clip_*), "
                              f"got {getattr(encoder, 'name', type(encoder).__name__)!r}")
        self.encoder, self.residual, self.ffn = encoder, bool(residual), bool(ffn)
        self.scale = None if scale is None else _positive(scale, f"{self.method}: option scale must be a positive "
                                                                 "number or none")
        self.register_buffer("text", torch.zeros(0, encoder.proj_dim), persistent=False)
        self.logit_scale = 100.0

    def prepare(self, class_names, protocol) -> None:
        """Text embeddings (Q, E) of every class name under the protocol's templates."""
        emb = text_embeddings(self.encoder.encode_text, class_names, protocol.templates)
        self.text = emb.embeddings.to(self.encoder.device)
        self.query_classes = emb.query_classes.cpu()
        self.logit_scale = float(protocol.logit_scale)

    def attention_scale(self, heads: BlockHeads) -> float:
        """The logit scale of the q/k products: ``scale``, or CLIP's head_dim^-1/2."""
        return heads.scale if self.scale is None else self.scale

    def attention(self, heads: BlockHeads) -> Tensor | Mix:  # pragma: no cover - abstract
        """The method's attention weights (B, H or 1, N, T) of the N patch rows over all T tokens."""
        raise NotImplementedError

    def rule(self, images: Tensor):
        """The attention rule for this batch (None: each token attends to itself)."""
        return self.attention

    def dense_embeddings(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> unit-norm patch embeddings (B, E, h, w); (h, w) is CLIP's grid
        (ceil(H/p), ceil(W/p)) unless the rule moves the tokens to another grid (ProxyCLIP)."""
        enc = self.encoder
        tokens, grid = enc.tokens_before_last_block(images)  # (B, 1 + R + N, C)
        out, (gh, gw) = last_block(enc, tokens, grid, self.rule(images), residual=self.residual, ffn=self.ffn)
        emb = F.normalize(enc.project_tokens(out, apply_norm=True).float(), dim=-1)  # (B, N', E)
        return emb.transpose(1, 2).reshape(emb.shape[0], -1, gh, gw)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> logits (B, Q, h, w) = logit_scale * cosine."""
        if self.text.numel() == 0:
            raise RuntimeError(f"{type(self).__name__}.prepare(class_names, protocol) must be called before inference")
        emb = self.dense_embeddings(images)
        return self.logit_scale * torch.einsum("behw,qe->bqhw", emb, self.text.to(emb.dtype))


class MaskClip(DenseClip):
    """MaskCLIP: in the last block the query-key attention is skipped, every patch token takes its own
    value embedding through the attention's output projection (``residual``: plus the block input,
    ``ffn``: plus the block's MLP, both as in MaskCLIP's released code; turn both off for the reduced
    block ClearCLIP uses).

    Args:
        encoder: a :class:`~leafseg.backbones.ClipEncoder` (any ``clip_*`` registry backbone).
    """

    method = "maskclip"

    def __init__(self, encoder: nn.Module, residual: bool = True, ffn: bool = True):
        super().__init__(encoder, residual=residual, ffn=ffn)

    def attention(self, heads: BlockHeads) -> Tensor:
        """Identity weights (1, 1, N, N): each patch row puts all weight on its own value."""
        n = heads.grid[0] * heads.grid[1]
        return torch.eye(n, device=heads.v.device)[None, None]

    def rule(self, images: Tensor):
        return None  # the same identity, computed as ``value_branch`` without forming the heads


def _positive(value, message: str, zero: bool = False) -> float:
    """``value`` as a float > 0 (>= 0 with ``zero``); anything else raises ConfigError with ``message``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        raise ConfigError(f"{message}, got {value!r}")
    return number
