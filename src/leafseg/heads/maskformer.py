"""MaskFormer without a class head, as S-Seg uses it: backbone -> per-pixel decoder -> query decoder.

* The backbone yields feature maps at several strides (:class:`ViTPyramid` turns the tapped blocks
  of a plain ViT into a ViTDet-style simple pyramid, strides 4, 8, 16 and 32 by default).
* The per-pixel decoder (:class:`PixelDecoder`, MaskFormer's FPN "base pixel decoder") fuses them
  top-down into high-resolution per-pixel embeddings (stride 4).
* The transformer decoder (:class:`QueryDecoder`, DETR's post-norm decoder) lets N learnable
  queries cross-attend to the lowest-resolution map. Each query outputs a raw mask feature
  (its decoder state, ``hidden_dim`` wide) and a mask embedding (a 3-layer MLP of it); the mask
  is the dot product of the mask embedding with the per-pixel embeddings. There is no class head.

Paper sizes (S-Seg section 4.1): 6 decoder layers, N = 64 queries, hidden and output dim 256.

    model = build_maskformer("dino_vits16", weights="random")
    out = model(images)            # images (B, 3, H, W) in [0, 1]
    out["masks"]                   # (B, 64, H/4, W/4) mask logits
    out["features"]                # (B, 64, 256) raw mask features
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leafseg.heads.stem import ConvStem, add_local
from leafseg.heads.stem import group_norm as _group_norm


def _resampler(channels: int, scale: float) -> nn.Module:
    """Resize a (B, C, h, w) map by ``scale``: transposed convs up, strided convs down, else bilinear."""
    if scale == 1:
        return nn.Identity()
    if scale > 1 and float(scale).is_integer() and (int(scale) & (int(scale) - 1)) == 0:
        layers: list[nn.Module] = []
        for i in range(int(math.log2(scale))):
            layers.append(nn.ConvTranspose2d(channels, channels, 2, stride=2))
            if i < int(math.log2(scale)) - 1:
                layers += [_group_norm(channels), nn.GELU()]
        return nn.Sequential(*layers)
    if scale < 1 and float(1 / scale).is_integer() and (int(1 / scale) & (int(1 / scale) - 1)) == 0:
        return nn.Sequential(*[nn.Conv2d(channels, channels, 3, stride=2, padding=1)
                               for _ in range(int(math.log2(1 / scale)))])
    return _Interpolate(scale)


class _Interpolate(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (max(1, round(x.shape[-2] * self.scale)), max(1, round(x.shape[-1] * self.scale)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ViTPyramid(nn.Module):
    """A leafseg ViT encoder as a multi-scale backbone (ViTDet's simple feature pyramid).

    Block ``layers[i]`` (final LayerNorm applied) is projected to ``channels`` and resampled from
    the patch stride ``p`` to ``strides[i]``. forward(images (B, 3, H, W) in [0, 1]) -> list of
    (B, channels, ceil(H/p) * p / strides[i], ...) maps, highest resolution first.

    stem_channels > 0 adds :class:`leafseg.heads.stem.ConvStem` on the pixels; its stride-4 output is
    projected and added to the highest-resolution level, so the pixel decoder gets the local
    stride-4 map a hierarchical backbone (Swin, ResNet) would give it. Off by default.
    """

    def __init__(self, encoder: nn.Module, *, layers: Sequence[int], strides: Sequence[int] = (4, 8, 16, 32),
                 channels: int = 256, stem_channels: int = 0):
        super().__init__()
        if len(layers) != len(strides):
            raise ValueError(f"need one tapped block per stride, got layers={tuple(layers)} strides={tuple(strides)}")
        if list(strides) != sorted(strides):
            raise ValueError(f"strides must increase (highest resolution first), got {tuple(strides)}")
        self.encoder, self.layers, self.strides = encoder, tuple(int(i) for i in layers), tuple(strides)
        self.channels = int(channels)
        p, dim = encoder.patch_size, encoder.embed_dim
        self.project = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, channels, 1), _group_norm(channels))
                                     for _ in strides)
        self.resample = nn.ModuleList(_resampler(channels, p / s) for s in strides)
        self.stem = self.stem_proj = None
        if stem_channels:
            if strides[0] != 4:
                raise ValueError(f"the convolutional stem feeds the stride-4 level; strides start at {strides[0]}")
            self.stem = ConvStem(stem_channels)
            self.stem_proj = nn.Sequential(nn.Conv2d(self.stem.channels, channels, 1), _group_norm(channels))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = self.encoder.features(images, layers=self.layers, final_norm=False).maps
        norm = self.encoder.final_norm_layer
        maps = [norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for m in maps]
        out = [res(proj(m)) for m, proj, res in zip(maps, self.project, self.resample, strict=True)]
        if self.stem is not None:
            local = self.stem_proj(self.stem(self.encoder.normalize(images)))
            out[0] = add_local(out[0], local)
        return out


class PixelDecoder(nn.Module):
    """MaskFormer's FPN pixel decoder.

    forward(maps: list of (B, C_i, h_i, w_i), highest resolution first) ->
    (mask_features (B, mask_dim, h_0, w_0), the lowest-resolution input map (B, C_last, h_L, w_L)).
    """

    def __init__(self, in_channels: Sequence[int], *, conv_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList()
        self.output = nn.ModuleList()
        for i, c in enumerate(in_channels):
            last = i == len(in_channels) - 1
            self.lateral.append(nn.Identity() if last else nn.Sequential(
                nn.Conv2d(c, conv_dim, 1, bias=False), _group_norm(conv_dim)))
            self.output.append(nn.Sequential(
                nn.Conv2d(c if last else conv_dim, conv_dim, 3, padding=1, bias=False), _group_norm(conv_dim),
                nn.ReLU(inplace=True)))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.output[-1](maps[-1])
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[i](maps[i])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = self.output[i](y)
        return self.mask_features(y), maps[-1]


def sine_position(x: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's 2-D sine position encoding of a map x (B, C, h, w) -> (1, C, h, w), C divisible by 4."""
    c, h, w = x.shape[1:]
    if c % 4:
        raise ValueError(f"sine position encoding needs a channel count divisible by 4, got {c}")
    quarter = c // 4
    freq = temperature ** (torch.arange(quarter, device=x.device, dtype=torch.float32) / quarter)
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    py, px = ys[:, None] / freq, xs[:, None] / freq  # (h, C/4), (w, C/4)
    py = torch.cat([py.sin(), py.cos()], 1)[:, None, :].expand(h, w, 2 * quarter)
    px = torch.cat([px.sin(), px.cos()], 1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([py, px], 2).permute(2, 0, 1)[None].to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with PyTorch SDPA. forward(q (B, Lq, D), k (B, Lk, D), v (B, Lk, D),
    mask (B, 1, Lq, Lk) bool, True = may attend, or None) -> (B, Lq, D)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, lq, d = q.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(q)), split(self.k(k)), split(self.v(v)), attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(b, lq, d))


class DecoderLayer(nn.Module):
    """DETR decoder layer (post-norm): self-attention, cross-attention to the memory, FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tgt (B, N, D), query_pos (1, N, D), memory and pos (B, L, D), cross-attention mask
        (B, 1, N, L) or None -> (B, N, D)."""
        q = tgt + query_pos
        tgt = self.norms[0](tgt + self.drop(self.self_attn(q, q, tgt)))
        tgt = self.norms[1](tgt + self.drop(self.cross_attn(tgt + query_pos, memory + pos, memory, mask)))
        return self.norms[2](tgt + self.drop(self.ffn(tgt)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between: (..., in_dim) -> (..., out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def pooling_mode(value) -> str:
    """The ``mask_pooling`` setting as one of off | add | only (False -> off, True -> add)."""
    mode = {False: "off", True: "add"}.get(value, value) if isinstance(value, bool) else str(value)
    if mode not in ("off", "add", "only"):
        raise ValueError(f"mask_pooling must be off, add or only (or a bool), got {value!r}")
    return mode


class QueryDecoder(nn.Module):
    """N learnable queries decoded against the lowest-resolution map; no class head.

    forward(memory (B, C_in, h, w), mask_features (B, mask_dim, H', W')) -> list over decoder
    layers (last one last) of dicts: ``features`` (B, N, hidden_dim) raw mask features,
    ``mask_embeddings`` (B, N, mask_dim), ``masks`` (B, N, H', W') mask logits.

    masked_attention (Mask2Former's change, off in MaskFormer and S-Seg): each query starts from
    learned content instead of zeros, and its cross-attention is restricted to the memory positions
    inside the mask it predicted before the layer (all positions when that mask is empty).
    mask_pooling (off in MaskFormer and S-Seg): each query's raw mask feature also receives a linear
    map of the per-pixel embeddings averaged inside its own predicted mask (sigmoid weights, not
    back-propagated into the mask), so a query's feature describes the pixels of its mask.
    ``True`` or ``"add"`` adds it to the decoder state; ``"only"`` uses it alone as the mask feature
    (the decoder state then only predicts the mask).
    """

    def __init__(self, in_channels: int, *, num_queries: int = 64, hidden_dim: int = 256, num_layers: int = 6,
                 heads: int = 8, ffn_dim: int = 2048, mask_dim: int = 256, dropout: float = 0.0,
                 masked_attention: bool = False, mask_pooling: bool | str = False):
        super().__init__()
        self.num_queries, self.masked_attention = int(num_queries), bool(masked_attention)
        self.mask_pooling = pooling_mode(mask_pooling)
        self.pool_proj = nn.Linear(mask_dim, hidden_dim) if self.mask_pooling != "off" else None
        self.query_feat = nn.Embedding(num_queries, hidden_dim) if masked_attention else None
        self.input_proj = nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, memory: torch.Tensor, mask_features: torch.Tensor) -> list[dict]:
        mem = self.input_proj(memory)
        pos = sine_position(mem).flatten(2).transpose(1, 2)  # (1, L, D)
        mem = mem.flatten(2).transpose(1, 2)  # (B, L, D)
        query_pos = self.query_embed.weight[None]  # (1, N, D)
        if self.query_feat is not None:
            tgt = self.query_feat.weight[None].expand(mem.shape[0], -1, -1).to(mem.dtype)
        else:
            tgt = torch.zeros(mem.shape[0], self.num_queries, mem.shape[2], device=mem.device, dtype=mem.dtype)
        outputs, mask = [], None
        if self.masked_attention:
            mask = self._attention_mask(self._predict(tgt, mask_features)["masks"], memory.shape[-2:])
        for layer in self.layers:
            tgt = layer(tgt, query_pos, mem, pos, mask)
            outputs.append(self._predict(tgt, mask_features))
            if self.masked_attention:
                mask = self._attention_mask(outputs[-1]["masks"], memory.shape[-2:])
        return outputs

    def _predict(self, tgt: torch.Tensor, mask_features: torch.Tensor) -> dict:
        feats = self.norm(tgt)
        emb = self.mask_embed(feats)
        masks = torch.einsum("bnc,bchw->bnhw", emb, mask_features)
        if self.pool_proj is not None:
            weights = masks.detach().float().sigmoid()  # (B, N, H', W')
            pooled = torch.einsum("bnhw,bchw->bnc", weights, mask_features.float())
            pooled = pooled / weights.sum((2, 3)).clamp_min(1e-6)[..., None]  # (B, N, mask_dim)
            pooled = self.pool_proj(pooled.to(feats.dtype))
            feats = pooled if self.mask_pooling == "only" else feats + pooled
        return {"features": feats, "mask_embeddings": emb, "masks": masks}

    @staticmethod
    def _attention_mask(masks: torch.Tensor, size) -> torch.Tensor:
        """(B, N, H', W') logits -> (B, 1, N, h*w) bool: inside the mask at the memory's resolution."""
        inside = F.interpolate(masks.detach().float(), size=tuple(size), mode="bilinear",
                               align_corners=False).flatten(2) >= 0
        inside |= ~inside.any(-1, keepdim=True)  # an empty mask attends everywhere
        return inside[:, None]


class MaskFormer(nn.Module):
    """Backbone + pixel decoder + query decoder.

    forward(images (B, 3, H, W) in [0, 1]) -> dict with the last decoder layer's ``masks``
    (B, N, h, w) logits at the pixel decoder's resolution (stride 4 by default), ``features``
    (B, N, hidden_dim), ``mask_embeddings`` (B, N, mask_dim), and ``aux``: the same three for
    each earlier decoder layer (deep supervision).

    memory_level: which backbone map the queries attend to; -1, the lowest resolution, is
    MaskFormer's choice. On tiny images that map has very few tokens (one at 32 px with stride 32),
    and since the queries start from identical content and differ only through their attention
    over the memory, they then stay identical: pick a finer level there.
    """

    def __init__(self, backbone: nn.Module, pixel_decoder: PixelDecoder, decoder: QueryDecoder,
                 memory_level: int = -1):
        super().__init__()
        self.backbone, self.pixel_decoder, self.decoder = backbone, pixel_decoder, decoder
        self.memory_level = int(memory_level)

    @property
    def num_queries(self) -> int:
        return self.decoder.num_queries

    def forward(self, images: torch.Tensor) -> dict:
        maps = self.backbone(images)
        return self.decode(maps)

    def decode(self, maps: Sequence[torch.Tensor]) -> dict:
        """The heads alone: backbone maps (highest resolution first) -> the outputs of ``forward``."""
        mask_features, lowest = self.pixel_decoder(maps)
        memory = lowest if self.memory_level == -1 else maps[self.memory_level]
        layers = self.decoder(memory, mask_features)
        return {**layers[-1], "aux": layers[:-1]}


def semantic_inference(mask_logits: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
    """MaskFormer's semantic combination: sum over queries of class probability x mask probability.

    mask_logits: (B, N, h, w); class_probs: (B, N, C) (each query's distribution over classes).
    Returns (B, C, h, w) scores (not normalised over classes; in [0, N]).
    """
    return torch.einsum("bnc,bnhw->bchw", class_probs.float(), mask_logits.float().sigmoid())


def default_layers(depth: int, n: int = 4) -> tuple[int, ...]:
    """Blocks to tap for an n-level pyramid: the last block of each of n equal parts of the encoder."""
    if depth < n:
        return tuple(min(i, depth - 1) for i in range(n))
    return tuple(round((i + 1) * depth / n) - 1 for i in range(n))


def build_maskformer(backbone: str, *, weights: str | None = "random", device: str = "cpu",
                     arch_overrides: dict | None = None, layers: Sequence[int] | None = None,
                     strides: Sequence[int] = (4, 8, 16, 32), num_queries: int = 64, hidden_dim: int = 256,
                     dec_layers: int = 6, heads: int = 8, ffn_dim: int = 2048, mask_dim: int = 256,
                     conv_dim: int = 256, dropout: float = 0.0, memory_level: int = -1,
                     masked_attention: bool = False, mask_pooling: bool | str = False,
                     stem_channels: int = 0) -> MaskFormer:
    """A MaskFormer (no class head) on a registry ViT, in train mode on ``device``.

    backbone / weights / arch_overrides: as ``leafseg.backbones.build_backbone``; layers: tapped
    blocks (default: evenly spaced, see :func:`default_layers`); strides: pyramid strides in pixels.
    The pyramid and the pixel decoder are ``conv_dim`` wide; memory_level: see :class:`MaskFormer`;
    masked_attention, mask_pooling: see :class:`QueryDecoder`; stem_channels: see :class:`ViTPyramid`.
    """
    from leafseg.backbones import build_backbone
    from leafseg.heads.dpt import freeze_unused

    encoder = build_backbone(backbone, weights=weights, device=device, arch_overrides=arch_overrides)
    layers = tuple(layers) if layers else default_layers(encoder.num_blocks, len(strides))
    freeze_unused(encoder, layers)
    pyramid = ViTPyramid(encoder, layers=layers, strides=strides, channels=conv_dim, stem_channels=stem_channels)
    pixel = PixelDecoder([conv_dim] * len(strides), conv_dim=conv_dim, mask_dim=mask_dim)
    decoder = QueryDecoder(conv_dim, num_queries=num_queries, hidden_dim=hidden_dim, num_layers=dec_layers,
                           heads=heads, ffn_dim=ffn_dim, mask_dim=mask_dim, dropout=dropout,
                           masked_attention=masked_attention, mask_pooling=mask_pooling)
    return MaskFormer(pyramid, pixel, decoder, memory_level).to(device).train()
