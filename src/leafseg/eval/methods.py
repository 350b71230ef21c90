"""Segmenters the harness can evaluate: training-free CLIP, per-image k-means, any trained model.

The contract (duck-typed; :class:`Segmenter` documents it)::

    method.prepare(class_names, protocol)     # once per evaluation: text embeddings, cluster count...
    scores = method(images)                   # images (B, 3, h, w) float in [0, 1]

* ``outputs == "logits"``: ``scores`` is (B, Q, h', w') at any resolution; Q channels map to
  classes through ``method.query_classes`` ((Q,) int64, class of each channel; None when Q == C).
* ``outputs == "clusters"``: ``scores`` is (B, h', w') int64 cluster ids in [0, ``num_clusters``).

Trained models from the recipes plug in through :class:`ModelSegmenter`; :func:`load_model` rebuilds
exported weights through the recipe table (:mod:`leafseg.registry`), so ``leafseg eval model`` works on
every recipe's outputs.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from leafseg.errors import ConfigError
from leafseg.eval.clip_methods import ClearClip, MaskClip, NaClip, ProxyClip, SClip
from leafseg.eval.grouping_clip import GroupingClip
from leafseg.eval.segmenter import Segmenter

__all__ = [
    "ClearClip",
    "GroupingClip",
    "KMeansSegmenter",
    "MaskClip",
    "ModelSegmenter",
    "NaClip",
    "ProxyClip",
    "SClip",
    "Segmenter",
    "build_method",
    "list_methods",
    "load_model",
    "method_options",
]


class KMeansSegmenter(Segmenter):
    """Per-image k-means of backbone features (the S-Seg pseudo-mask generator) as a cluster method.

    Cluster ids are per image, so score them with ``labelling=oracle`` (pseudo-mask quality); the
    dataset-level Hungarian matching of ``labelling=hungarian`` additionally measures whether ids
    mean the same thing across images, which per-image k-means does not attempt.

    Args:
        encoder: a backbone (or ``PixelFeatures``) with ``patch_size`` and ``features``.
        k: clusters per image; None takes ``protocol.num_clusters`` or the number of classes.
        layer, kind, metric, seed, upsample: as :class:`~leafseg.grouping.PseudoMaskGenerator`.
    """

    outputs = "clusters"

    def __init__(self, encoder: nn.Module, k: int | None = None, *, layer: int = -1, kind: str = "tokens",
                 metric: str = "cosine", seed: int = 0, upsample: str = "bilinear"):
        super().__init__()
        self.encoder, self.k = encoder, k
        self.options = dict(layer=layer, kind=kind, metric=metric, seed=seed, upsample=upsample)
        self.generator = None

    def prepare(self, class_names, protocol) -> None:
        from leafseg.grouping import PseudoMaskGenerator

        k = self.k or protocol.num_clusters or len(class_names)
        self.num_clusters = int(k)
        self.generator = PseudoMaskGenerator(self.encoder, k=self.num_clusters, **self.options)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> cluster ids (B, H, W) int64 in [0, num_clusters)."""
        if self.generator is None:
            raise RuntimeError("KMeansSegmenter.prepare(class_names, protocol) must be called before inference")
        return self.generator(images)


class ModelSegmenter(Segmenter):
    """Any module mapping images to class logits, e.g. a recipe's trained segmentation model.

    Args:
        model: ``model(x) -> (B, C, h', w')`` logits (or a dict/tuple holding them, see ``output``).
        mean, std: if given, images in [0, 1] are normalised as ``(x - mean) / std`` first.
        output: key of the logits when the model returns a dict, index when it returns a tuple.
        num_classes: expected C; checked against the class list at ``prepare``.
    """

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor], *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, output: str | int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        self.model, self.output, self.num_classes = model, output, num_classes
        norm = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean if norm else [0.0] * 3).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std if norm else [1.0] * 3).view(1, -1, 1, 1), persistent=False)

    def prepare(self, class_names, protocol) -> None:
        if self.num_classes is not None and len(class_names) != self.num_classes:
            raise ConfigError(f"the model predicts {self.num_classes} classes but the evaluation asks for "
                              f"{len(class_names)} (check the dataset and background=none)")

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> logits (B, C, h', w')."""
        out = self.model((images - self.mean) / self.std)
        if self.output is not None:
            out = out[self.output]
        elif isinstance(out, dict):
            out = out.get("logits", out.get("out"))
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) or out.ndim != 4:
            raise ValueError("the model must return (B, C, h, w) logits (set output= for dicts and tuples)")
        return out


# -- weights of trained models -------------------------------------------------------------
def load_model(path: str | os.PathLike, device: str = "cpu") -> Segmenter:
    """A trained model from weights a recipe exported (``.safetensors`` or ``.pt``, read without
    unpickling), rebuilt by the recipe named in the file through :mod:`leafseg.registry`."""
    from leafseg.registry import load_exported_segmenter

    model = load_exported_segmenter(path, device)
    return model if isinstance(model, Segmenter) else ModelSegmenter(model).to(device)


# -- by name -------------------------------------------------------------------------------
def _clip_method(cls):
    """The builder of a dense CLIP method (default backbone clip_vitb16)."""

    def build(backbone, weights, device, **options):
        from leafseg.backbones import build_backbone

        return cls(build_backbone(backbone or "clip_vitb16", weights=weights, device=device), **options)

    return build


def _build_kmeans(backbone, weights, device, **options):
    from leafseg.grouping import build_feature_extractor

    encoder = build_feature_extractor(backbone or "dino_vits8", weights=weights, device=device).eval()
    return KMeansSegmenter(encoder, **options)


def _build_model(backbone, weights, device, **options):
    if weights is None:
        raise ConfigError("method 'model' needs --weights pointing at weights a recipe exported")
    return load_model(weights, device)


_CLIP_METHODS = {"maskclip": MaskClip, "sclip": SClip, "clearclip": ClearClip, "naclip": NaClip, "proxyclip": ProxyClip}
_METHODS = {**{name: _clip_method(cls) for name, cls in _CLIP_METHODS.items()},
            "grouping_clip": _clip_method(GroupingClip), "kmeans": _build_kmeans, "model": _build_model}
# options: constructor keywords after the encoder
_OPTIONS_OF = {**_CLIP_METHODS, "grouping_clip": GroupingClip, "kmeans": KMeansSegmenter}


def list_methods() -> list[str]:
    """Names accepted by :func:`build_method`."""
    return list(_METHODS)


def method_options(name: str) -> tuple[str, ...]:
    """The option names :func:`build_method` accepts for method ``name``."""
    cls = _OPTIONS_OF.get(name)
    return tuple(list(inspect.signature(cls.__init__).parameters)[2:]) if cls is not None else ()


def build_method(name: str, backbone: str | None = None, weights: str | None = None, device: str = "cpu",
                 **options) -> Segmenter:
    """A segmenter by name: the dense CLIP methods "maskclip", "sclip", "clearclip", "naclip" and
    "proxyclip", the region method "grouping_clip" (default backbone clip_vitb16), "kmeans" (dino_vits8,
    or pixels8 for RGB), "model" (``weights`` = a recipe checkpoint). ``options`` go to the constructor
    (e.g. ``k=27`` for kmeans, ``residual=False`` for maskclip, ``std=3`` for naclip, ``vfm="dino_vits8"``
    for proxyclip, ``group_backbone="dino_vits8"`` or ``tokens=PATH`` for grouping_clip)."""
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(_METHODS)}")
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"method {name!r} takes no option {', '.join(unknown)} (--option); "
                          f"it takes: {', '.join(accepted) or 'none'}")
    return _METHODS[name](backbone, weights, device, **options).to(device).eval()
