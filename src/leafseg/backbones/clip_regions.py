"""Region recognition with CLIP: one embedding per region mask, all regions of an image in one pass.

    regions = RegionEncoder(clip, masked_blocks=1)          # clip: a ClipEncoder
    emb = regions(images, masks)                            # (B, 3, H, W), (B, M, H', W') -> (B, M, E)

Three ways to encode M regions (Fig. 5 of the grouping-then-recognition paper, "mode"):

* ``"context"`` (c), context-aware masking: one sequence per image, [CLS, patches, M region tokens].
  CLS and patches attend to CLS and patches exactly as for the whole image (they never see a
  region token). Region token m attends to itself and to the patches inside region m, in the
  last ``masked_blocks`` blocks; it never sees the image's CLS or another region token (as in
  MAFT, whose mask-aware class tokens attend to themselves plus the patches of their mask; MAFT
  also hides the image's CLS from the patches, which this module does not, so the patches and the
  image embedding stay those of the plain image).
* ``"pixels"`` (a): pixels outside the region are set to the mean colour (zero after
  normalisation) and each region is encoded as its own image: B*M forward passes.
* ``"drop"`` (b): in the last ``masked_blocks`` blocks each region is encoded from its own class
  token and only the patch tokens inside it, as if the other patches had been cut out of the
  sequence (``masked_blocks="all"`` drops them at the input, the paper's variant). All regions of
  an image share one packed sequence with a block-diagonal attention mask.

Region tokens. Before the masked blocks the region tokens are copies of the image's class token
(taken at the input of block L-k, as MAFT does), so with a mask covering the whole image every
region embedding equals the image embedding. ``region_tokens`` (M, C) replaces that copy with M
learnable tokens in the space of CLIP's ``class_embedding`` (before the class position embedding
and ``pre_layrnorm``): they enter at the input sequence and, in blocks before the masked ones,
attend like a class token to themselves and all patches. ``initial_region_tokens(M)`` gives M
copies of ``class_embedding``, with which the result equals the copied-class-token path. In
"pixels" mode a region token replaces the class token of that region's masked image.

Masks. Each (soft or binary) mask is resized bilinearly (``align_corners=False``) to the patch
grid and a patch belongs to the region where the value is >= ``threshold`` (0.5 by default, as in
MAFT). Masks of any size cover the image; for images whose side is not a multiple of the patch
size the mask is first resized to the image and zero-padded like the image. A region with no
patch at or above the threshold keeps the patch(es) where its resized mask peaks, if that peak is
above zero; with an all-zero mask the region token has no patch and attends to itself only.
"pixels" mode resizes masks to the image instead of the grid.

Output: region embeddings after CLIP's ``post_layernorm`` and visual projection, the same space
as ``ClipEncoder.image_embedding`` (raw, or L2-normalised with ``normalize=True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leafseg.errors import ConfigError

from .clip import ClipEncoder

MODES = ("context", "pixels", "drop")


def region_grid(masks: torch.Tensor, image_size: tuple[int, int], patch_size: int,
                threshold: float = 0.5) -> torch.Tensor:
    """masks (B, M, H', W') soft or binary over an image of ``image_size`` (H, W) -> keep
    (B, M, h*w) bool on the padded patch grid h = ceil(H/p), w = ceil(W/p), row-major.

    Bilinear resize to the grid, then ``value >= threshold``; an empty region keeps its peak
    patch(es) when the peak is above zero (see the module docstring).
    """
    height, width = image_size
    p = patch_size
    h, w = -(-height // p), -(-width // p)
    m = masks.float()
    if (h * p, w * p) != (height, width):
        if m.shape[-2:] != (height, width):
            m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
        m = F.pad(m, (0, w * p - width, 0, h * p - height))
    grid = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False).flatten(2)
    keep = grid >= threshold
    peak = grid.amax(-1, keepdim=True)
    empty = ~keep.any(-1, keepdim=True)
    return keep | (empty & (peak > 0) & (grid == peak))


def pixel_masks(masks: torch.Tensor, image_size: tuple[int, int], padded: tuple[int, int],
                threshold: float = 0.5) -> torch.Tensor:
    """masks (B, M, H', W') -> keep (B, M, Hp, Wp) bool: bilinear resize to the image (H, W),
    ``value >= threshold``, then False in the padding up to ``padded`` (Hp, Wp)."""
    m = masks.float()
    if m.shape[-2:] != tuple(image_size):
        m = F.interpolate(m, size=tuple(image_size), mode="bilinear", align_corners=False)
    keep = m >= threshold
    return F.pad(keep, (0, padded[1] - image_size[1], 0, padded[0] - image_size[0]))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, heads, T, C / heads)."""
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) -> (B, T, heads * d)."""
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def _qkv(layer: nn.Module, x: torch.Tensor):
    """tokens (B, T, C) -> q, k, v, each (B, heads, T, d), from ``layer_norm1(x)``."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    return tuple(_split_heads(proj(h), attn.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))


def _finish(layer: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """Residual attention output and MLP: x (B, T, C), attended (B, heads, T, d) -> (B, T, C)."""
    x = x + layer.self_attn.out_proj(_merge_heads(attended))
    return x + layer.mlp(layer.layer_norm2(x))


def context_block(layer: nn.Module, tokens: torch.Tensor, regions: torch.Tensor,
                  allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One CLIP block over the joint sequence [tokens, regions] with context-aware masking.

    tokens (B, S, C): [CLS, patches], attending to each other only (plain SDPA, as the block
    itself). regions (B, M, C): region token m attends to itself and to the tokens where
    ``allowed[:, m]`` (B, M, S) is True. Returns the block outputs (B, S, C) and (B, M, C).
    """
    s, m = tokens.shape[1], regions.shape[1]
    scale = layer.self_attn.scale
    x = torch.cat([tokens, regions], 1)
    q, k, v = _qkv(layer, x)
    main = F.scaled_dot_product_attention(q[:, :, :s], k[:, :, :s], v[:, :, :s], scale=scale)
    itself = torch.eye(m, dtype=torch.bool, device=x.device).expand(x.shape[0], m, m)
    mask = torch.cat([allowed, itself], -1).unsqueeze(1)
    own = F.scaled_dot_product_attention(q[:, :, s:], k, v, attn_mask=mask, scale=scale)
    out = _finish(layer, x, torch.cat([main, own], 2))
    return out[:, :s], out[:, s:]


def masked_block(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One CLIP block with an attention mask: x (B, T, C), mask (B, T, T) bool (True = may
    attend; every row needs one True) -> (B, T, C)."""
    q, k, v = _qkv(layer, x)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), scale=layer.self_attn.scale)
    return _finish(layer, x, attended)


def pack_regions(patches: torch.Tensor, regions: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay the regions of each image side by side in one sequence for "drop" mode.

    patches (B, N, C), regions (B, M, C), keep (B, M, N) bool -> sequence (B, M + P, C) =
    [region tokens, the kept patches of region 0, of region 1, ..., padding] with P the largest
    kept count in the batch, and mask (B, M + P, M + P) bool: a token attends to the tokens of
    its own region only (padding to itself only). A patch in two regions appears twice.
    """
    b, m, n = keep.shape
    flat = keep.flatten(1)
    slot = flat.long().cumsum(1) - 1
    width = max(int(flat.sum(1).max()), 1)
    batch, index = flat.nonzero(as_tuple=True)
    group = torch.arange(m + width, device=keep.device).repeat(b, 1) + m  # padding: a group of its own
    group[batch, m + slot[batch, index]] = index // n
    group[:, :m] = torch.arange(m, device=keep.device)
    source = torch.zeros(b, width, dtype=torch.long, device=keep.device)
    source[batch, slot[batch, index]] = index % n
    packed = patches.gather(1, source.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return torch.cat([regions, packed], 1), group.unsqueeze(2) == group.unsqueeze(1)


class RegionEncoder(nn.Module):
    """CLIP region embeddings for M region masks per image (see the module docstring).

    encoder: a ``ClipEncoder`` (L blocks, width C, projection E); with ``freeze`` (default) its
        parameters stop requiring gradients, so gradients reach only ``region_tokens``.
    masked_blocks: k in 1..L, or "all" (= L): the last k blocks use the region masks; region
        tokens are copies of the class token at the input of block L-k.
    threshold: a patch (pixel, in "pixels" mode) is in a region where the resized mask is >= it.
    mode: "context", "pixels" or "drop".
    normalize: L2-normalise the region embeddings.
    chunk: masked images per forward pass in "pixels" mode.
    """

    def __init__(self, encoder: ClipEncoder, *, masked_blocks: int | str = 1, threshold: float = 0.5,
                 mode: str = "context", normalize: bool = False, freeze: bool = True, chunk: int = 32) -> None:
        super().__init__()
        if not isinstance(encoder, ClipEncoder):
            raise ConfigError(f"RegionEncoder needs a CLIP encoder (clip_*), got {type(encoder).__name__}")
        if mode not in MODES:
            raise ConfigError(f"region mode must be one of {', '.join(MODES)}; got {mode!r}")
        blocks = encoder.num_blocks
        if masked_blocks == "all":
            masked_blocks = blocks
        if isinstance(masked_blocks, bool) or not isinstance(masked_blocks, int) or not 1 <= masked_blocks <= blocks:
            raise ConfigError(f"masked_blocks must be an integer in 1..{blocks} or 'all' for {encoder.name}; "
                              f"got {masked_blocks!r}")
        if not 0.0 < float(threshold) <= 1.0:
            raise ConfigError(f"region mask threshold must be in (0, 1]; got {threshold!r}")
        if int(chunk) < 1:
            raise ConfigError(f"chunk must be at least 1; got {chunk!r}")
        self.encoder = encoder
        self.masked_blocks = int(masked_blocks)
        self.threshold = float(threshold)
        self.mode = mode
        self.normalize = bool(normalize)
        self.chunk = int(chunk)
        if freeze:
            encoder.requires_grad_(False)

    def initial_region_tokens(self, num_regions: int) -> torch.Tensor:
        """(M, C): M copies of CLIP's ``class_embedding`` (detached), the starting values of
        learnable region tokens; encoding with them equals encoding without ``region_tokens``."""
        cls = self.encoder.model.vision_model.embeddings.class_embedding
        return cls.detach().clone().expand(num_regions, -1).clone()

    def _embed_region_tokens(self, values: torch.Tensor) -> torch.Tensor:
        """values (M, C) in the ``class_embedding`` space -> (M, C) as block 0 receives them:
        plus the class position embedding, then ``pre_layrnorm``."""
        vision = self.encoder.model.vision_model
        position = vision.embeddings.position_embedding.weight[0]
        return vision.pre_layrnorm(values.to(position.dtype) + position)

    def _check(self, images: torch.Tensor, masks: torch.Tensor, region_tokens: torch.Tensor | None) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must have shape (B, 3, H, W); got {tuple(images.shape)}")
        if masks.ndim != 4 or masks.shape[0] != images.shape[0] or masks.shape[1] < 1 or min(masks.shape[2:]) < 1:
            raise ConfigError(f"masks must have shape (B, M, H', W') with B = {images.shape[0]} images and M >= 1; "
                              f"got {tuple(masks.shape)}")
        c = self.encoder.embed_dim
        if region_tokens is not None and tuple(region_tokens.shape) != (masks.shape[1], c):
            raise ConfigError(f"region_tokens must have shape (M, C) = ({masks.shape[1]}, {c}); "
                              f"got {tuple(region_tokens.shape)}")

    def forward(self, images: torch.Tensor, masks: torch.Tensor,
                region_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], masks (B, M, H', W') soft or binary (any size, covering
        the image), region_tokens (M, C) or None -> region embeddings (B, M, E) on the encoder's
        device. Gradients flow (into ``region_tokens`` when the encoder is frozen)."""
        self._check(images, masks, region_tokens)
        masks = masks.to(self.encoder.device)
        pixels = self.encoder.prepare(images)
        if self.mode == "pixels":
            out = self._pixels(pixels, masks, tuple(images.shape[2:]), region_tokens)
        else:
            keep = region_grid(masks, tuple(images.shape[2:]), self.encoder.patch_size, self.threshold)
            tokens, regions = self._entry(pixels, masks.shape[1], region_tokens)
            if self.mode == "context":
                regions = self._context(tokens, regions, keep)
            else:
                regions = self._drop(tokens, regions, keep)
            out = self.encoder.project_tokens(regions)
        return F.normalize(out, dim=-1) if self.normalize else out

    def _entry(self, pixels: torch.Tensor, num_regions: int,
               region_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, 3, Hp, Wp) -> the tokens entering block L-k: [CLS, patches] (B, 1+N, C) and
        region tokens (B, M, C) (copies of CLS, or ``region_tokens`` run through blocks < L-k)."""
        enc = self.encoder
        start = enc.num_blocks - self.masked_blocks
        b = pixels.shape[0]
        if region_tokens is None:
            if start == 0:
                tokens = enc._embed(pixels)
            else:
                tokens = enc.run_blocks(pixels, [start - 1], "tokens", final_norm=False)[start - 1]
            return tokens, tokens[:, :1].expand(b, num_regions, -1)
        tokens = enc._embed(pixels)
        regions = self._embed_region_tokens(region_tokens).unsqueeze(0).expand(b, -1, -1)
        everything = torch.ones(b, num_regions, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        everything[:, :, 0] = False  # like a class token: itself and every patch
        for i in range(start):
            tokens, regions = context_block(enc.blocks[i], tokens, regions, everything)
        return tokens, regions

    def _context(self, tokens: torch.Tensor, regions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1+N, C), regions (B, M, C), keep (B, M, N) -> region tokens (B, M, C) after
        the masked blocks, before the final norm."""
        no_cls = torch.zeros_like(keep[:, :, :1])
        allowed = torch.cat([no_cls, keep], -1)
        blocks = self.encoder.blocks
        for i in range(len(blocks) - self.masked_blocks, len(blocks)):
            tokens, regions = context_block(blocks[i], tokens, regions, allowed)
        return regions

    def _drop(self, tokens: torch.Tensor, regions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """As ``_context``, with each region seeing only its own kept patches (block-diagonal)."""
        m = regions.shape[1]
        x, mask = pack_regions(tokens[:, 1:], regions, keep)
        blocks = self.encoder.blocks
        for i in range(len(blocks) - self.masked_blocks, len(blocks)):
            x = masked_block(blocks[i], x, mask)
        return x[:, :m]

    def _pixels(self, pixels: torch.Tensor, masks: torch.Tensor, image_size: tuple[int, int],
                region_tokens: torch.Tensor | None) -> torch.Tensor:
        """pixels (B, 3, Hp, Wp) normalised and padded, masks (B, M, H', W') -> (B, M, E): each
        region's masked image (mean colour outside) encoded alone, ``chunk`` images per pass."""
        b, m = masks.shape[:2]
        keep = pixel_masks(masks, image_size, tuple(pixels.shape[2:]), self.threshold)
        first = None if region_tokens is None else self._embed_region_tokens(region_tokens).repeat(b, 1)
        out = []
        for lo in range(0, b * m, self.chunk):
            hi = min(lo + self.chunk, b * m)
            image = torch.div(torch.arange(lo, hi, device=pixels.device), m, rounding_mode="floor")
            masked = pixels[image] * keep.flatten(0, 1)[lo:hi].unsqueeze(1).to(pixels.dtype)
            h = self.encoder._embed(masked)
            if first is not None:
                h = torch.cat([first[lo:hi].unsqueeze(1), h[:, 1:]], 1)
            for block in self.encoder.blocks:
                h = block(h, None)
                h = h[0] if isinstance(h, tuple) else h
            out.append(self.encoder.project_tokens(h[:, 0]))
        return torch.cat(out).view(b, m, -1)
