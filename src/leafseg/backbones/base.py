"""The image-encoder contract shared by DINO, DINOv2 and CLIP.

Every image encoder turns a batch of RGB images in [0, 1] into per-block feature maps:

    out = encoder.features(images, layers=(-1,), kind="tokens")
    out.maps[i]  # (B, C, ceil(H / p), ceil(W / p))
    out.cls[i]   # (B, C)

Images of any size are accepted. After mean/std normalisation the batch is zero-padded on the
right and bottom up to a multiple of the patch size ``p`` (zero in normalised space is the mean
colour), and the position embeddings are interpolated to the padded patch grid. The last row and
column of a map therefore cover partly padded patches.

Position embeddings are resampled by the checkpoint authors' rule by default (DINO, DINOv2) or
by the Hugging Face one (CLIP, whose authors have none); ``pos_interpolation`` ("authors", "hf"
or "dino") chooses, see ``pos_embed.py``. The target is the padded grid ceil(H/p) x ceil(W/p);
the authors' code, given an unpadded image, uses floor(H/p) x floor(W/p) (DINO drops the
remainder, DINOv2 refuses it), so the two agree whenever H and W are multiples of p.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from leafseg.errors import UserError

from .pos_embed import resolve_rule

KINDS = ("tokens", "keys", "queries", "values")


class BackboneNotAvailable(UserError, RuntimeError):
    """The requested checkpoint cannot be found offline (or an optional package is missing)."""


@dataclass
class BackboneOutput:
    """Features of the requested blocks, in the order they were requested.

    maps: list of (B, C, h, w) patch features, registers excluded.
    cls: list of (B, C) class-token features of the same block and kind.
    """

    maps: list[torch.Tensor] = field(default_factory=list)
    cls: list[torch.Tensor] = field(default_factory=list)


class ImageEncoder(nn.Module):
    """Base class: normalisation, padding, the block loop, and q/k/v capture.

    Public API besides ``features``: ``mean`` and ``std`` (the per-channel constants, tuples of
    3 floats) and ``normalize(images)`` (the same normalisation ``features`` applies);
    ``tokens_before_last_block(images)`` (the token sequence the last block receives, for
    methods such as MaskCLIP that replace that block); ``blocks`` (the transformer blocks) and
    ``final_norm_layer`` (the model's last LayerNorm); ``pos_interpolation`` (settable: "authors",
    "hf" or "dino", see ``pos_embed.py``) and ``pos_rule`` (the rule it resolves to).

    Subclasses wrap a Hugging Face vision transformer and provide ``_embed`` (pixels to the
    token sequence fed to block 0), ``blocks``, ``_qkv`` (a block's query/key/value linear
    layers) and ``final_norm_layer``.
    Token sequences are ordered [CLS, registers..., patches...]: 1 + R + N tokens.
    """

    def __init__(self, *, name: str, patch_size: int, embed_dim: int, num_blocks: int,
                 mean: Sequence[float], std: Sequence[float], num_registers: int = 0,
                 authors_pos_rule: str = "", pos_interpolation: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.authors_pos_rule = authors_pos_rule
        self.pos_interpolation = pos_interpolation
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.num_blocks = int(num_blocks)
        self.num_registers = int(num_registers)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    # -- provided by subclasses ------------------------------------------------------------
    blocks: nn.ModuleList

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W), H and W multiples of the patch size -> tokens (B, 1+R+N, C)."""
        raise NotImplementedError

    def _qkv(self, block: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The (query, key, value) linear layers of ``block``, each C -> C."""
        raise NotImplementedError

    @property
    def final_norm_layer(self) -> nn.Module:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    @property
    def pos_interpolation(self) -> str:
        """How position embeddings are resampled off the native grid: "authors", "hf" or "dino"."""
        return self._pos_option

    @pos_interpolation.setter
    def pos_interpolation(self, option: str | None) -> None:
        """None selects the default: "authors" when the checkpoint's authors have a rule, else "hf"."""
        self._pos_rule = resolve_rule(option, self.authors_pos_rule, self.name)
        self._pos_option = option if option is not None else ("authors" if self.authors_pos_rule else "hf")

    @property
    def pos_rule(self) -> str:
        """The resolved rule: "dino", "dinov2", "dinov2_reg" or "hf" (see ``pos_embed.py``)."""
        return self._pos_rule

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.blocks.parameters()).dtype

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> ``(images - mean) / std`` per channel, (B, 3, H, W).

        The constants live on the encoder's device as float32 (1, 3, 1, 1) tensors; the usual
        type promotion applies (float32 or wider out). No padding (see :meth:`prepare`).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return (images - self._mean) / self._std

    def prepare(self, images: torch.Tensor, normalize_input: bool = True) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> normalised, padded pixels (B, 3, p*h, p*w)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [0, 1], got dtype {images.dtype}")
        x = images.to(self.device, torch.float32)
        if normalize_input:
            x = self.normalize(x)
        p = self.patch_size
        pad_h, pad_w = (-x.shape[2]) % p, (-x.shape[3]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x.to(self.dtype)

    def resolve_layers(self, layers: int | Sequence[int]) -> list[int]:
        """Block indices (negative allowed) -> non-negative indices, in the given order."""
        if isinstance(layers, int):
            layers = (layers,)
        out = []
        for i in layers:
            j = int(i) + self.num_blocks if int(i) < 0 else int(i)
            if not 0 <= j < self.num_blocks:
                raise IndexError(f"{self.name}: block {i} out of range for {self.num_blocks} blocks")
            out.append(j)
        if not out:
            raise ValueError(f"{self.name}: at least one block index is required")
        return out

    def run_blocks(self, pixels: torch.Tensor, layers: list[int], kind: str,
                   final_norm: bool) -> dict[int, torch.Tensor]:
        """Run blocks 0..max(layers) and return {block: tokens (B, 1+R+N, C)} of the given kind.

        "tokens" is the block output; "queries"/"keys"/"values" are the block's q/k/v linear
        layers applied to its pre-attention LayerNorm output (heads concatenated), captured
        with forward hooks. ``final_norm`` applies the model's last LayerNorm to the output
        tokens of the final block.
        """
        wanted = set(layers)
        blocks = self.blocks
        captured: dict[int, torch.Tensor] = {}
        hooks = []
        if kind != "tokens":
            which = {"queries": 0, "keys": 1, "values": 2}[kind]
            for i in wanted:
                module = self._qkv(blocks[i])[which]
                hooks.append(module.register_forward_hook(_store(captured, i)))
        try:
            h = self._embed(pixels)
            for i in range(max(wanted) + 1):
                h = blocks[i](h, None)
                h = h[0] if isinstance(h, tuple) else h
                if kind == "tokens" and i in wanted:
                    last = final_norm and i == self.num_blocks - 1
                    captured[i] = self.final_norm_layer(h) if last else h
        finally:
            for hook in hooks:
                hook.remove()
        return captured

    def tokens_before_last_block(self, images: torch.Tensor,
                                 normalize_input: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """The token sequence that enters the last transformer block, and the patch grid.

        images: (B, 3, H, W) float in [0, 1] (already normalised if ``normalize_input=False``),
            padded as in :meth:`features`.
        Returns ``(tokens, (h, w))``: tokens (B, 1 + R + h*w, C) ordered [CLS, registers,
        patches] (the output of block ``num_blocks - 2``, or of the patch embedding when the
        model has one block; no final LayerNorm), and the grid h = ceil(H/p), w = ceil(W/p) of
        the patch tokens, row-major. ``tokens[:, 1 + num_registers:]`` are the patches.
        Gradients flow.
        """
        pixels = self.prepare(images, normalize_input)
        grid = (pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size)
        if self.num_blocks == 1:
            return self._embed(pixels), grid
        before = self.num_blocks - 2
        return self.run_blocks(pixels, [before], "tokens", final_norm=False)[before], grid

    def features(self, images: torch.Tensor, layers: int | Sequence[int] = (-1,), kind: str = "tokens",
                 normalize_input: bool = True, final_norm: bool = True) -> BackboneOutput:
        """Per-block features of a batch of images.

        images: (B, 3, H, W) float in [0, 1] (any H, W; already normalised if
            ``normalize_input=False``).
        layers: block indices, negative allowed (-1 is the last block).
        kind: "tokens", "queries", "keys" or "values".
        final_norm: apply the model's last LayerNorm to the last block's "tokens" (what DINO,
            STEGO and the Hugging Face ``last_hidden_state`` use). Ignored for other blocks/kinds.
        Returns maps: list of (B, C, ceil(H/p), ceil(W/p)); cls: list of (B, C).
        Gradients flow; wrap in ``torch.inference_mode()`` for frozen use.
        """
        if kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {kind!r}")
        idx = self.resolve_layers(layers)
        pixels = self.prepare(images, normalize_input)
        h, w = pixels.shape[2] // self.patch_size, pixels.shape[3] // self.patch_size
        tokens = self.run_blocks(pixels, idx, kind, final_norm)
        out = BackboneOutput()
        skip = 1 + self.num_registers
        for i in idx:
            t = tokens[i]
            out.cls.append(t[:, 0])
            patches = t[:, skip:]
            out.maps.append(patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w).contiguous())
        return out

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        """images (B, 3, H, W) in [0, 1] -> last-block tokens (final LayerNorm applied)."""
        return self.features(images)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, patch_size={self.patch_size}, embed_dim={self.embed_dim}, "
                f"num_blocks={self.num_blocks}, registers={self.num_registers}, "
                f"pos_interpolation={self.pos_interpolation!r}")


def _store(captured: dict[int, torch.Tensor], index: int):
    def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
        captured[index] = output

    return hook
