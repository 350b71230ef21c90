"""Group, then recognise: class-agnostic regions from self-supervised features, each recognised by CLIP.

    seg = GroupingClip(clip, group_backbone="dino_vitb8", num_regions=27)    # clip: a ClipEncoder
    seg.prepare(["road", "sky", "tree"], protocol)     # text embeddings under the protocol's templates
    logits = seg(images)                               # (B, 3, H, W) in [0, 1] -> (B, Q, H, W)

Per image: the grouping (:class:`~leafseg.grouping.RegionGrouper`, per-image k-means of the grouping
encoder's patch features by default) gives M regions as low-resolution masks ``M^L`` (the encoder's
patch grid) and a high-resolution label map ``M^H`` (image resolution). CLIP embeds every region from its
``M^L`` in one pass (:class:`~leafseg.backbones.RegionEncoder`: ``mode``, ``masked_blocks``,
``threshold``, and optionally trained region tokens). A region's class scores are the cosines of its
embedding with the class-name text embeddings times the protocol's ``logit_scale``; every pixel of
``M^H`` takes the scores of its region, so the output is at the image's own resolution and the harness's
activation, background rule and argmax apply unchanged (the argmax of a pixel is its region's class).

Trained region tokens (``tokens``) come from the ``grouping_clip`` recipe's exported weights (or a
tensor (M, C)); M must then equal ``num_regions``. Empty regions (no patch on the grouping grid) are
encoded but paint no pixel.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from leafseg.errors import ConfigError
from leafseg.eval.prompts import text_embeddings
from leafseg.eval.segmenter import Segmenter

__all__ = ["GroupingClip", "load_region_tokens", "paint_regions"]

KINDS = ("tokens", "keys", "queries", "values")
DEFAULT_REGIONS = 27


def paint_regions(region_scores: Tensor, labels: Tensor) -> Tensor:
    """Every pixel takes the scores of its region.

    region_scores: (B, M, Q); labels: (B, H, W) int64 in [0, M). Returns (B, Q, H, W) in the scores' dtype.
    """
    b, m, q = region_scores.shape
    if labels.ndim != 3 or labels.shape[0] != b:
        raise ValueError(f"labels must be (B, H, W) with B = {b}, got {tuple(labels.shape)}")
    index = labels.flatten(1).unsqueeze(-1).expand(-1, -1, q)  # (B, H*W, Q)
    painted = region_scores.gather(1, index)  # (B, H*W, Q)
    return painted.transpose(1, 2).reshape(b, q, *labels.shape[1:])


def load_region_tokens(path: str | os.PathLike) -> Tensor:
    """The region tokens (M, C) of weights the ``grouping_clip`` recipe exported."""
    from leafseg.training.checkpoint import read_exported

    if not os.path.isfile(path):
        raise ConfigError(f"grouping_clip: option tokens: file not found: {path}")
    exported = read_exported(path)
    if exported["recipe"] != "grouping_clip" or "tokens" not in exported["model"]:
        raise ConfigError(f"grouping_clip: option tokens: {path} holds weights of recipe {exported['recipe']!r}, "
                          "not the region tokens of a grouping_clip run")
    return exported["model"]["tokens"].float()


def _grouping_encoder(backbone: str | nn.Module, weights, device) -> nn.Module:
    """The frozen grouping encoder: a registry name (or ``pixels8``) built on ``device``, or a module as given."""
    if isinstance(backbone, str):
        from leafseg.grouping import build_feature_extractor

        backbone = build_feature_extractor(backbone, weights=weights, device=str(device))
    elif weights is not None:
        raise ConfigError("grouping_clip: group_weights applies to a group_backbone given by name")
    if not (hasattr(backbone, "features") and hasattr(backbone, "patch_size")):
        raise ConfigError(f"grouping_clip: group_backbone must be an image encoder with patch features, "
                          f"got {type(backbone).__name__}")
    return backbone.eval().requires_grad_(False)


def _region_count(num_regions, tokens: Tensor | None) -> int:
    """M: ``num_regions``, or the number of token rows, or 27; a disagreement is an error."""
    if num_regions is not None and (isinstance(num_regions, bool) or not isinstance(num_regions, int)
                                    or num_regions < 1):
        raise ConfigError(f"grouping_clip: num_regions must be a positive integer, got {num_regions!r}")
    if tokens is None:
        return num_regions or DEFAULT_REGIONS
    if num_regions is not None and num_regions != tokens.shape[0]:
        raise ConfigError(f"grouping_clip: num_regions={num_regions} but the region tokens hold "
                          f"{tokens.shape[0]} regions")
    return int(tokens.shape[0])


class GroupingClip(Segmenter):
    """Grouping + CLIP region recognition as a harness method (see the module docstring).

    Args:
        encoder: a :class:`~leafseg.backbones.ClipEncoder` (``clip_*``), kept frozen.
        group_backbone: the grouping encoder, a registry name (``dino_vitb8``, ``dino_vits8``, ...,
            ``pixels8`` for RGB cells) or a built module with ``patch_size`` and ``features``.
        group_weights: its weights (folder, file, Hub id or "random"); None: the local cache.
        num_regions: M, the regions per image (default: the token count, else 27).
        group_layer, group_kind: which block's features are grouped and which kind ("tokens", "keys", ...).
        seed: seed of the k-means draws.
        mode, masked_blocks, threshold: the :class:`~leafseg.backbones.RegionEncoder` settings.
        tokens: trained region tokens, a path to a ``grouping_clip`` export or a tensor (M, C); None:
            the class-token copies of untrained CLIP.
    """

    def __init__(self, encoder: nn.Module, group_backbone: str | nn.Module = "dino_vitb8", group_weights=None,
                 num_regions: int | None = None, group_layer: int = -1, group_kind: str = "tokens", seed: int = 0,
                 mode: str = "context", masked_blocks: int | str = "all", threshold: float = 0.5,
                 tokens: str | os.PathLike | Tensor | None = None):
        super().__init__()
        from leafseg.backbones import RegionEncoder
        from leafseg.grouping import RegionGrouper

        self.regions = RegionEncoder(encoder, masked_blocks=masked_blocks, threshold=threshold, mode=mode,
                                     normalize=True)
        if group_kind not in KINDS:
            raise ConfigError(f"grouping_clip: group_kind must be one of {', '.join(KINDS)}, got {group_kind!r}")
        if isinstance(group_layer, bool) or not isinstance(group_layer, int):
            raise ConfigError(f"grouping_clip: group_layer must be a block index, got {group_layer!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"grouping_clip: seed must be an integer, got {seed!r}")
        if tokens is not None and not isinstance(tokens, Tensor):
            tokens = load_region_tokens(tokens)
        if tokens is not None and (tokens.ndim != 2 or tokens.shape[1] != encoder.embed_dim):
            raise ConfigError(f"grouping_clip: region tokens must be (M, {encoder.embed_dim}) for {encoder.name}, "
                              f"got {tuple(tokens.shape)}")
        m = _region_count(num_regions, tokens)
        self.grouper = RegionGrouper(_grouping_encoder(group_backbone, group_weights, encoder.device), m,
                                     layer=group_layer, kind=group_kind, seed=seed)
        self.register_buffer("tokens", None if tokens is None else tokens.detach().clone().to(encoder.device))
        self.register_buffer("text", torch.zeros(0, encoder.proj_dim), persistent=False)
        self.logit_scale = 100.0

    @property
    def encoder(self) -> nn.Module:
        return self.regions.encoder

    @property
    def num_regions(self) -> int:
        return int(self.grouper.num_regions)

    def prepare(self, class_names, protocol) -> None:
        """Text embeddings (Q, E) of every class name under the protocol's templates; its logit scale."""
        emb = text_embeddings(self.encoder.encode_text, class_names, protocol.templates)
        self.text = emb.embeddings.to(self.encoder.device)
        self.query_classes = emb.query_classes.cpu()
        self.logit_scale = float(protocol.logit_scale)

    def region_embeddings(self, images: Tensor, regions) -> Tensor:
        """images (B, 3, H, W) in [0, 1], :class:`~leafseg.grouping.Regions` -> unit embeddings (B, M, E)."""
        return self.regions(images, regions.low.float(), region_tokens=self.tokens)

    def region_scores(self, images: Tensor):
        """images (B, 3, H, W) in [0, 1] -> (Regions, scores (B, M, Q) = logit_scale * cosine)."""
        if self.text.numel() == 0:
            raise RuntimeError("GroupingClip.prepare(class_names, protocol) must be called before inference")
        regions = self.grouper(images)
        emb = self.region_embeddings(images, regions).float()
        return regions, self.logit_scale * emb @ self.text.float().t()

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> logits (B, Q, H, W): each pixel its region's class scores."""
        regions, scores = self.region_scores(images)
        return paint_regions(scores, regions.labels_high.to(scores.device))
