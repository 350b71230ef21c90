"""Training-free dense CLIP: MaskCLIP and the SCLIP family (SCLIP, ClearCLIP, NACLIP, ProxyCLIP).

Every method keeps CLIP frozen and rebuilds only its last vision block with
:func:`leafseg.backbones.clip_dense.last_block`; they differ in the attention rule and in whether the
block's residual and MLP are kept. The patch tokens then go through ``post_layernorm`` and the visual
projection and are compared by cosine with template-averaged text embeddings, times the protocol's
``logit_scale`` (the ``sclip-family`` preset is the harness these methods were published with).

Attention rules, per head, over the T = 1 + N tokens entering the block (CLS included, as in the released
code of each method); q, k, v are the block's own projections and s = ``scale`` (default head_dim^-1/2):

    maskclip   identity (each patch keeps its own value)                    residual + MLP
    sclip      softmax(s q q^T) + softmax(s k k^T)   (rows sum to 2)        residual + MLP
    clearclip  softmax(s q q^T)                                             no residual, no MLP
    naclip     softmax(s k k^T + G), G_ij = exp(-|p_i - p_j|^2 / 2 std^2)   no residual, no MLP
               on patch pairs (positions p on the grid), 0 where the CLS token is involved
    proxyclip  softmax over patches of gamma (S - beta mean(S)), entries < 0 cut, where S is the cosine
               similarity of a second encoder's (DINO's) patch features; mixes CLIP's patch values
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leafseg.backbones.clip_dense import BlockHeads, Mix, last_block, softmax_rows
from leafseg.errors import ConfigError
from leafseg.eval.prompts import text_embeddings
from leafseg.eval.segmenter import Segmenter

__all__ = ["ClearClip", "DenseClip", "MaskClip", "NaClip", "ProxyClip", "SClip", "gaussian_neighbourhood"]

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


class SClip(DenseClip):
    """SCLIP (correlative self-attention): softmax(s q q^T) + softmax(s k k^T) in the last block, whose
    residual and MLP stay (SCLIP's released code; the sum is not halved).

    Args:
        encoder: a ClipEncoder. scale: attention scale s (None: head_dim^-1/2, the released code's).
    """

    method = "sclip"

    def __init__(self, encoder: nn.Module, scale: float | None = None, residual: bool = True, ffn: bool = True):
        super().__init__(encoder, residual=residual, ffn=ffn, scale=scale)

    def attention(self, heads: BlockHeads) -> Tensor:
        """(B, H, N, T): softmax(s q_p q^T) + softmax(s k_p k^T), p the patch rows."""
        s = self.attention_scale(heads)
        q, k = heads.q.float(), heads.k.float()
        qq = heads.patches(q) @ q.transpose(-1, -2)
        kk = heads.patches(k) @ k.transpose(-1, -2)
        return softmax_rows(s * qq) + softmax_rows(s * kk)


class ClearClip(DenseClip):
    """ClearCLIP: query-query attention softmax(s q q^T) in the last block, without its residual and MLP.

    Args:
        encoder: a ClipEncoder. scale: attention scale s (None: head_dim^-1/2, the released code's).
        residual, ffn: put back the block's residual / MLP (both off in ClearCLIP).
    """

    method = "clearclip"

    def __init__(self, encoder: nn.Module, scale: float | None = None, residual: bool = False, ffn: bool = False):
        super().__init__(encoder, residual=residual, ffn=ffn, scale=scale)

    def attention(self, heads: BlockHeads) -> Tensor:
        """(B, H, N, T): softmax(s q_p q^T), p the patch rows."""
        q = heads.q.float()
        return softmax_rows(self.attention_scale(heads) * (heads.patches(q) @ q.transpose(-1, -2)))


def gaussian_neighbourhood(grid: tuple[int, int], std: float, device=None) -> Tensor:
    """(N, N) with N = h*w: exp(-|p_i - p_j|^2 / (2 std^2)) for the row-major grid positions p (in patches)."""
    h, w = grid
    idx = torch.arange(h * w, device=device)
    y, x = (idx // w).float(), (idx % w).float()
    d2 = (y[:, None] - y[None]) ** 2 + (x[:, None] - x[None]) ** 2
    return torch.exp(-d2 / (2.0 * float(std) ** 2))


class NaClip(DenseClip):
    """NACLIP: key-key attention plus a Gaussian neighbourhood bias, softmax(s k k^T + G), in the reduced
    last block (no residual, no MLP). G adds exp(-d^2 / 2 std^2) for two patches d patches apart and
    nothing where the CLS token is involved (NACLIP's released code).

    Args:
        encoder: a ClipEncoder. std: the Gaussian's standard deviation in patches (NACLIP's default 5).
        scale: attention scale s (None: head_dim^-1/2). residual, ffn: put back the residual / MLP.
    """

    method = "naclip"

    def __init__(self, encoder: nn.Module, std: float = 5.0, scale: float | None = None, residual: bool = False,
                 ffn: bool = False):
        super().__init__(encoder, residual=residual, ffn=ffn, scale=scale)
        self.std = _positive(std, "naclip: option std (the Gaussian's standard deviation, in patches) must be > 0")

    def attention(self, heads: BlockHeads) -> Tensor:
        """(B, H, N, T): softmax(s k_p k^T + G), G on the patch-patch block only."""
        k = heads.k.float()
        logits = self.attention_scale(heads) * (heads.patches(k) @ k.transpose(-1, -2))
        bias = gaussian_neighbourhood(heads.grid, self.std, device=k.device)
        logits[..., heads.prefix :] += bias
        return softmax_rows(logits)


_GRIDS = ("vfm", "clip")


class ProxyClip(DenseClip):
    """ProxyCLIP: last-block attention from a vision foundation model's patch-feature similarity.

    S = cosine similarity of the VFM's patch features (last block, final LayerNorm: what DINO's
    ``get_intermediate_layers`` returns); A = gamma * (S - beta * mean(S)) with the mean over the whole
    (M, M) matrix of each image; entries A < 0 are masked out; softmax per row; the same weights for
    every head mix CLIP's patch values (the CLS token takes no part); no residual, no MLP. A token always
    keeps itself, so a row is never empty (where the released code would give NaN).

    Args:
        encoder: a ClipEncoder.
        vfm: the second encoder, a registry name (``leafseg backbones``; DINO / DINOv2) or a built image
            encoder. ProxyCLIP's released code uses DINO ViT-B/8.
        vfm_weights: its weights (as ``--weights``: folder, file, Hub id or "random"); None: local cache.
        beta, gamma: the normalisation's shift (also the cut: S < beta * mean(S) is masked) and scale,
            ProxyCLIP's defaults 1.2 and 3.0.
        grid: "vfm" mixes on the VFM's patch grid, CLIP's values resized to it bilinearly (ProxyCLIP's
            code; logits at the VFM's resolution); "clip" resizes the VFM's features to CLIP's grid.

    Each encoder pads the image to its own patch size, so the two grids cover exactly the same pixels
    when the input (the protocol's window) is a multiple of both patch sizes, e.g. 336 = 21 * 16 = 42 * 8.
    """

    method = "proxyclip"

    def __init__(self, encoder: nn.Module, vfm: str | nn.Module = "dino_vitb8", vfm_weights: str | None = None,
                 beta: float = 1.2, gamma: float = 3.0, grid: str = "vfm"):
        super().__init__(encoder, residual=False, ffn=False)
        if grid not in _GRIDS:
            raise ConfigError(f"proxyclip: option grid must be one of {', '.join(_GRIDS)}, got {grid!r}")
        self.gamma = _positive(gamma, "proxyclip: option gamma (the similarity scale) must be > 0")
        self.beta = _positive(beta, "proxyclip: option beta (the shift, in means of the similarity) must be >= 0",
                              zero=True)
        self.grid = grid
        self.vfm = _build_vfm(vfm, vfm_weights, encoder.device)

    def rule(self, images: Tensor):
        maps = self.vfm.features(images, layers=(-1,), kind="tokens", final_norm=True).maps[0]  # (B, C', h', w')
        return lambda heads: self.attention(heads, maps)

    def attention(self, heads: BlockHeads, maps: Tensor) -> Mix:
        """maps (B, C', h', w') VFM patch features -> Mix of weights (B, 1, M, M), CLIP patch values
        (B, H, M, d) and the output grid; M = h'*w' (grid "vfm") or CLIP's N (grid "clip")."""
        if self.grid == "clip" and tuple(maps.shape[-2:]) != heads.grid:
            maps = F.interpolate(maps.float(), size=heads.grid, mode="bilinear", align_corners=False)
        out_grid = (int(maps.shape[-2]), int(maps.shape[-1]))
        f = F.normalize(maps.flatten(2).float(), dim=1)  # (B, C', M)
        sim = f.transpose(1, 2) @ f  # (B, M, M)
        logits = self.gamma * (sim - self.beta * sim.mean(dim=(1, 2), keepdim=True))
        keep = (logits >= 0) | torch.eye(logits.shape[-1], dtype=torch.bool, device=logits.device)
        weights = softmax_rows(logits.masked_fill(~keep, float("-inf")))[:, None]
        return Mix(weights, _values_on(heads, out_grid), out_grid)


def _positive(value, message: str, zero: bool = False) -> float:
    """``value`` as a float > 0 (>= 0 with ``zero``); anything else raises ConfigError with ``message``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        raise ConfigError(f"{message}, got {value!r}")
    return number


def _values_on(heads: BlockHeads, grid: tuple[int, int]) -> Tensor:
    """CLIP's patch values (B, H, N, d) -> (B, H, h'*w', d), resized bilinearly to ``grid`` if it differs."""
    v = heads.patches(heads.v)
    if grid == heads.grid:
        return v
    b, h, _, d = v.shape
    maps = v.transpose(-1, -2).reshape(b * h, d, *heads.grid)
    maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
    return maps.reshape(b, h, d, -1).transpose(-1, -2)


def _build_vfm(vfm, weights, device) -> nn.Module:
    """The ProxyCLIP proxy encoder: a registry name built on ``device``, or an image encoder as given."""
    if isinstance(vfm, str):
        from leafseg.backbones import build_backbone, get_spec

        if get_spec(vfm).family not in ("dino", "dinov2", "clip"):  # unknown names raise ConfigError here
            raise ConfigError(f"proxyclip: option vfm must name an image encoder (dino_*, dinov2_*), got {vfm!r}")
        vfm = build_backbone(vfm, weights=weights, device=str(device))
    elif weights is not None:
        raise ConfigError("proxyclip: vfm_weights applies to a vfm given by name, not to a built encoder")
    if not (hasattr(vfm, "features") and hasattr(vfm, "patch_size")):
        raise ConfigError(f"proxyclip: option vfm must be an image encoder with patch features, got {vfm!r}")
    return vfm.eval()
