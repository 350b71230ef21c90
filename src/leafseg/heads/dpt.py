"""The DPT head (dense prediction transformer decoder) and a DINOv2 + DPT segmenter.

The head follows the configuration UniMatch V2 uses on DINOv2 (the Depth Anything variant):

* four tapped encoder blocks, each with the encoder's final LayerNorm applied, class token dropped;
* per level: 1x1 projection to ``out_channels[i]``, then resize -- level 1 x4 (transposed conv),
  level 2 x2 (transposed conv), level 3 unchanged, level 4 x1/2 (3x3 stride-2 conv);
* a bias-free 3x3 conv brings every level to ``features`` channels;
* four RefineNet-style fusion blocks top-down (two residual conv units, ReLU, no BatchNorm,
  bilinear upsampling with ``align_corners=True``, 1x1 output conv);
* output: 3x3 conv, ReLU, 1x1 conv to the classes. Logits come out at 8x the patch grid and the
  segmenter resizes them bilinearly (``align_corners=True``) to the input size.

Published sizes (``DPT_SIZES``): S features 64, out_channels (48, 96, 192, 384) (2.67M head
parameters for 21 classes; the authors' 2.7M also counts a residual unit of the deepest fusion
block that never runs, left out here so distributed training has no unused parameters);
B 128, (96, 192, 384, 768); L 256, (256, 512, 1024, 1024); G 384, (1536,) * 4.
Tapped blocks (``TAPPED_BLOCKS``): S/B 2, 5, 8, 11; L 4, 11, 17, 23; G 9, 19, 29, 39.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leafseg.heads.stem import ConvStem, add_local

# size letter -> (features, out_channels); tapped blocks per size.
DPT_SIZES: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "s": (64, (48, 96, 192, 384)),
    "b": (128, (96, 192, 384, 768)),
    "l": (256, (256, 512, 1024, 1024)),
    "g": (384, (1536, 1536, 1536, 1536)),
}
TAPPED_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "s": (2, 5, 8, 11), "b": (2, 5, 8, 11), "l": (4, 11, 17, 23), "g": (9, 19, 29, 39),
}
_PUBLISHED = {"s": (384, 12), "b": (768, 12), "l": (1024, 24), "g": (1536, 40)}  # embed dim, depth


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs with bias; (B, F, h, w) -> (B, F, h, w)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        return x + self.conv2(F.relu(out))


class FusionBlock(nn.Module):
    """RefineNet-style fusion: (path + rcu1(skip)) -> rcu2 -> bilinear resize -> 1x1 conv.

    forward(path (B, F, h, w), skip (B, F, h, w) or None, size (H', W') or None) -> (B, F, H', W');
    ``size=None`` upsamples by 2. ``with_skip=False`` (the deepest block, which has no skip
    input) has no ``rcu1``.
    """

    def __init__(self, features: int, with_skip: bool = True):
        super().__init__()
        self.rcu1 = ResidualConvUnit(features) if with_skip else None
        self.rcu2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            if self.rcu1 is None:
                raise ValueError("this fusion block takes no skip input")
            path = path + self.rcu1(skip)
        path = self.rcu2(path)
        if size is None:
            path = F.interpolate(path, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            path = F.interpolate(path, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class DPTHead(nn.Module):
    """DPT decoder: four (B, in_channels, h, w) maps -> logits (B, num_classes, 8h, 8w).

    Args:
        in_channels: channels C of each tapped encoder map.
        num_classes: output classes.
        features: width of the fusion path.
        out_channels: per-level projection widths (4 ints).
        stem_channels: > 0 adds :class:`leafseg.heads.stem.ConvStem` on the pixels, its stride-4 map
            projected to ``features`` and added to the second level (stride p/2) before fusion, so
            the head sees local features a ViT's tokens lack. Off (0) in DPT and UniMatch V2.
    """

    def __init__(self, in_channels: int, num_classes: int, features: int = 64,
                 out_channels: Sequence[int] = (48, 96, 192, 384), stem_channels: int = 0):
        super().__init__()
        self.stem = ConvStem(stem_channels) if stem_channels else None
        self.stem_proj = nn.Conv2d(self.stem.channels, features, 1) if self.stem is not None else None
        oc = [int(c) for c in out_channels]
        if len(oc) != 4:
            raise ValueError(f"out_channels needs 4 values, got {out_channels}")
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in oc)
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        self.to_features = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in oc)
        self.fusion = nn.ModuleList(FusionBlock(features, with_skip=i < 3) for i in range(4))
        self.output = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(True), nn.Conv2d(features, num_classes, 1))
        self.to(memory_format=torch.channels_last)

    def forward(self, maps: Sequence[torch.Tensor], pixels: torch.Tensor | None = None) -> torch.Tensor:
        """maps: 4 tensors (B, C, h, w), shallow to deep -> logits (B, num_classes, 8h, 8w).
        pixels: the normalised images (B, 3, H, W), needed only with a stem.

        The convolutions run in channels-last memory layout (faster on CPUs and tensor cores);
        the values do not depend on the layout."""
        if len(maps) != 4:
            raise ValueError(f"DPTHead needs 4 feature maps, got {len(maps)}")
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
        levels = [conv(res(proj(x))) for x, proj, res, conv
                  in zip(maps, self.projects, self.resize, self.to_features, strict=True)]
        l1, l2, l3, l4 = levels
        if self.stem is not None:
            if pixels is None:
                raise ValueError("a DPT head with a convolutional stem needs the pixels")
            local = self.stem_proj(self.stem(pixels.contiguous(memory_format=torch.channels_last)))
            l2 = add_local(l2, local)
        path = self.fusion[3](l4, None, size=l3.shape[-2:])
        path = self.fusion[2](path, l3, size=l2.shape[-2:])
        path = self.fusion[1](path, l2, size=l1.shape[-2:])
        path = self.fusion[0](path, l1, size=None)
        return self.output(path)


def size_letter(backbone: str) -> str | None:
    """The DINOv2 size letter of a registry name (``dinov2_vits14`` -> "s"), else None."""
    if backbone.startswith("dinov2_vit") and len(backbone) > 10 and backbone[10] in DPT_SIZES:
        return backbone[10]
    return None


def default_head_dims(backbone: str, embed_dim: int) -> tuple[int, tuple[int, int, int, int]]:
    """(features, out_channels) for an encoder: the published ones when ``embed_dim`` is the
    registry size's width, else scaled like S/B (features ~ C/6, out_channels C/8, C/4, C/2, C)."""
    letter = size_letter(backbone)
    if letter is not None and _PUBLISHED[letter][0] == embed_dim:
        return DPT_SIZES[letter]
    c = int(embed_dim)
    return max(8, c // 6), (max(4, c // 8), max(4, c // 4), max(4, c // 2), c)


def default_tapped_blocks(backbone: str, depth: int) -> tuple[int, int, int, int]:
    """The published tapped blocks when ``depth`` is the registry size's depth, else blocks
    evenly spaced (the last block of each quarter)."""
    letter = size_letter(backbone)
    if letter is not None and _PUBLISHED[letter][1] == depth:
        return TAPPED_BLOCKS[letter]
    if depth < 4:
        return tuple(min(i, depth - 1) for i in range(4))  # type: ignore[return-value]
    return tuple(round((i + 1) * depth / 4) - 1 for i in range(4))  # type: ignore[return-value]


class DPTSegmenter(nn.Module):
    """A ViT encoder (``leafseg.backbones``) + a DPT head.

    forward(images (B, 3, H, W) in [0, 1], channel_scale (B, C) or None) -> logits (B, K, H, W).
    ``channel_scale`` multiplies every token of every tapped level (after the final LayerNorm),
    channel by channel: Complementary Dropout's masks go here. ``encoder`` and ``head`` are
    attributes so the optimiser can give them different learning rates.
    """

    def __init__(self, encoder: nn.Module, head: DPTHead, layers: Sequence[int]):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.layers = tuple(int(i) for i in layers)
        if len(self.layers) != 4:
            raise ValueError(f"the DPT head taps 4 blocks, got {self.layers}")

    def tapped(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) -> 4 maps (B, C, ceil(H/p), ceil(W/p)), final LayerNorm on each."""
        maps = self.encoder.features(images, layers=self.layers, final_norm=False).maps
        norm = self.encoder.final_norm_layer
        return [norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for m in maps]

    def forward(self, images: torch.Tensor, channel_scale: torch.Tensor | None = None) -> torch.Tensor:
        maps = self.tapped(images)
        if channel_scale is not None:
            scale = channel_scale.to(maps[0].dtype)[:, :, None, None]
            maps = [m * scale for m in maps]
        pixels = None
        if self.head.stem is not None:
            pixels = self.encoder.normalize(images)
        logits = self.head(maps, pixels)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)


def freeze_unused(encoder: nn.Module, layers: Sequence[int]) -> int:
    """Stop gradients for encoder parameters the segmenter never uses (blocks after the deepest
    tapped one, the DINOv2 mask token), so distributed training sees no unused parameters.
    Returns how many tensors were frozen."""
    deepest = max(encoder.resolve_layers(layers))
    frozen = 0
    for i, block in enumerate(encoder.blocks):
        if i > deepest:
            for p in block.parameters():
                p.requires_grad_(False)
                frozen += 1
    for name, p in encoder.named_parameters():
        if name.endswith("mask_token"):
            p.requires_grad_(False)
            frozen += 1
    return frozen


def build_dpt_segmenter(backbone: str, num_classes: int, *, weights: str | None = None, device: str = "cpu",
                        arch_overrides: dict | None = None, layers: Sequence[int] | None = None,
                        features: int | None = None, out_channels: Sequence[int] | None = None,
                        attn_implementation: str | None = None, stem_channels: int = 0) -> DPTSegmenter:
    """A DINOv2 (any registry size) + DPT segmenter in train mode on ``device``.

    weights / arch_overrides: as ``leafseg.backbones.build_backbone``. layers, features,
    out_channels: default to the published values of the size (``TAPPED_BLOCKS``, ``DPT_SIZES``).
    attn_implementation: "sdpa" (the default build) or "eager" (the authors' attention).
    stem_channels: see :class:`DPTHead` (0: none, as published).
    """
    from leafseg.backbones import build_backbone

    encoder = build_backbone(backbone, weights=weights, device=device, arch_overrides=arch_overrides)
    if attn_implementation:
        encoder.model.set_attn_implementation(attn_implementation)
    dflt_features, dflt_out = default_head_dims(backbone, encoder.embed_dim)
    layers = tuple(layers) if layers else default_tapped_blocks(backbone, encoder.num_blocks)
    head = DPTHead(encoder.embed_dim, num_classes, features or dflt_features, out_channels or dflt_out,
                   stem_channels=stem_channels)
    freeze_unused(encoder, layers)
    return DPTSegmenter(encoder, head.to(device), layers).train()
