"""Building Hugging Face models from a ``Source``: folders, authors' files, random weights.

Every path ends in ``from_pretrained`` (or ``_from_config`` for random weights) with SDPA
attention when the model supports it and eager attention otherwise, in float32, and with
missing weights treated as an error rather than silently initialised.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from leafseg.errors import ConfigError

from .convert import detect_format, from_hub, merge_overrides, to_hub, unwrap_state_dict
from .registry import BackboneSpec
from .sources import Source, read_checkpoint

_IGNORED_UNEXPECTED = ("pooler.", "position_ids")


@contextmanager
def quiet_progress():
    """Silence the transformers / huggingface_hub progress bars inside the block."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _attn_fallback(build):
    """Call ``build(attn_implementation)`` with "sdpa", falling back to "eager" if refused."""
    try:
        return build("sdpa")
    except (ValueError, ImportError) as err:
        if "sdpa" not in str(err).lower() and "attn" not in str(err).lower():
            raise
        return build("eager")


def random_model(cls, config, **kwargs):
    """A randomly initialised ``cls`` for ``config`` (float32, eval mode)."""
    model = _attn_fallback(lambda attn: cls._from_config(config, attn_implementation=attn, **kwargs))
    return model.float().eval()


def from_pretrained(cls, source: Source, *, config=None, state_dict=None, **kwargs):
    """``cls.from_pretrained`` on a folder, a Hub id, or an in-memory Hub-format state dict.

    Raises ``ConfigError`` (a ValueError) naming the source when weights are missing, mis-shaped or unreadable.
    """
    target = None if state_dict is not None else str(source.path or source.hf_id)

    def build(attn: str):
        return cls.from_pretrained(
            target, config=config, state_dict=state_dict, attn_implementation=attn, dtype=torch.float32,
            local_files_only=source.kind != "hub", output_loading_info=True, **kwargs)

    try:
        with quiet_progress():
            model, info = _attn_fallback(build)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"cannot load {cls.__name__} weights from {source.label}: {err}") from err
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        raise ConfigError(f"{source.label} lacks {len(missing)} weights of {cls.__name__}, e.g. {missing[:5]}")
    unexpected = [k for k in sorted(info.get("unexpected_keys", ()))
                  if not any(s in k for s in _IGNORED_UNEXPECTED)]
    if unexpected:
        warnings.warn(f"{source.label}: ignored {len(unexpected)} weights not used by {cls.__name__}, "
                      f"e.g. {unexpected[:5]}", stacklevel=3)
    return model.float().eval()


def load_official(spec: BackboneSpec, source: Source, infer, overrides: dict | None):
    """Read one checkpoint file in the authors' (or Hub) key format.

    ``infer(authors_state_dict, spec) -> config keywords`` reads the architecture off tensor
    shapes; ``overrides`` then update those keywords. Returns (config keywords, Hub-format
    state dict in float32).
    """
    family = spec.family
    raw = read_checkpoint(source.path)
    try:
        sd = unwrap_state_dict(raw)
        if detect_format(sd) == "hub":
            sd = from_hub(sd, family)
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        if family == "dinov2" and "mask_token" not in sd:
            sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])  # unused for features
        kw = merge_overrides(infer(sd, spec), overrides)
        return kw, to_hub(sd, family)
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise ConfigError(f"{source.path} is not a {spec.name} checkpoint this loader understands: {err}") from err
