"""Evaluation protocols: every switch that changes a reported mIoU, as one explicit dataclass.

Published numbers for segmentation without dense labels come from harnesses that differ in
resolution, window, prompt templates, background rule, logit scale and refinement. A
:class:`Protocol` names all of them; the named presets reproduce the harnesses of the papers
leafseg implements or compares against, with their per-dataset values::

    p = get_preset("groupvit").resolve("voc")            # per-dataset values applied
    p = p.with_overrides(["bg_threshold=0.9", "pamr=true"])
    p.to_dict()                                           # saved beside every evaluation

Configuration flow: preset (or YAML file) -> :meth:`Protocol.resolve` for the dataset ->
``key=value`` overrides -> the resolved protocol is written into ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from leafseg.config import parse_key_values
from leafseg.errors import ConfigError

__all__ = [
    "PRESETS",
    "STUFF_WORDS",
    "Protocol",
    "canonical_dataset",
    "get_preset",
    "list_presets",
    "load_protocol",
]

MODES = ("whole", "slide")
BACKGROUND_RULES = ("none", "threshold", "constant", "stuff")
LABELLINGS = ("none", "hungarian", "oracle")
ACTIVATIONS = ("softmax", "sigmoid", "identity")
WINDOW_MERGES = ("logits", "probabilities")

# Extra "background" prompts of the SCLIP family for datasets whose class 0 is background.
STUFF_WORDS: tuple[str, ...] = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
    "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair",
    "floor", "hill", "rail", "fence",
)

# Other spellings of the dataset registry names the presets use (lower case, '-' and ' ' -> '_').
_ALIASES = {
    "voc21": "voc", "pascal_voc": "voc", "pascal_voc21": "voc", "voc2012": "voc", "pascal_voc20": "voc20",
    "pascal_context": "context60", "pascal_context60": "context60", "pc60": "context60",
    "pascal_context59": "context59", "pc59": "context59", "coco_obj": "coco_object", "cocoobject": "coco_object",
    "coco_stuff": "coco_stuff171", "cocostuff": "coco_stuff171", "coco_stuff164k": "coco_stuff171",
    "ade": "ade20k", "ade_20k": "ade20k", "ade150": "ade20k", "city": "cityscapes",
}


def canonical_dataset(name: str | None) -> str | None:
    """A dataset name as the presets' per-dataset tables spell it ("VOC21" -> "voc")."""
    if name is None:
        return None
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


@dataclass
class Protocol:
    """All settings of one evaluation. Sizes are in pixels.

    Input geometry:
        center_crop: if set, image AND mask are first resized so the short side is
            ``center_crop`` (bilinear / nearest) and centre-cropped to a square of that side;
            metrics are then computed at that size (STEGO). Otherwise metrics are computed at
            each image's original size and the prediction is resized back to it.
        short_side: resize the model input so its short side has this length (aspect kept).
        size: resize the model input to this fixed (H, W) instead (excludes ``short_side``).
        size_multiple: round the model input's sides up to a multiple of this (ViT-*/14).
        mode: "whole" (one forward per image) or "slide" (``crop`` windows every ``stride``).
        window_merge: average the windows' "logits" (mmseg) or their softmax "probabilities".
    Text side:
        templates: prompt template set, see :mod:`leafseg.eval.prompts` ("single", "tcl", "imagenet80").
        logit_scale: multiplier of the cosine similarities (CLIP: 100).
        activation: scores -> probabilities over the output channels: "softmax", "sigmoid"
            (independent per class, TCL) or "identity" (the model already outputs probabilities).
    Background (datasets whose class 0 is background), see :mod:`leafseg.eval.background`:
        background: "none" (class 0 is an ordinary class), "threshold" (max foreground
            probability below ``bg_threshold`` -> background), "constant" (a channel of
            constant ``bg_value`` competes in the argmax) or "stuff" (class 0 is prompted with
            ``bg_words``; max probability below ``bg_threshold`` -> background).
        bg_value_pamr: the constant used instead of ``bg_value`` when ``pamr`` is on (TCL: 0.4).
    Refinement: pamr, pamr_iterations, pamr_dilations (pixel-adaptive mask refinement).
    Cluster methods: labelling "hungarian" (one cluster->class map for the dataset) or
        "oracle" (every cluster of every image takes its majority class); num_clusters
        (None: the number of classes).
    Runtime: batch_size (images per forward; images of different sizes are never stacked),
        workers (data-loading processes), batch_windows (windows per forward in slide mode),
        amp (bf16 autocast on CUDA).
    per_dataset: {dataset: {field: value}} applied by :meth:`resolve`.
    """

    name: str = "custom"
    dataset: str | None = None
    center_crop: int | None = None
    short_side: int | None = None
    size: tuple[int, int] | None = None
    size_multiple: int | None = None
    mode: str = "whole"
    crop: int = 448
    stride: int = 224
    window_merge: str = "logits"
    templates: str = "single"
    logit_scale: float = 100.0
    activation: str = "softmax"
    background: str = "none"
    bg_threshold: float = 0.0
    bg_value: float = 0.5
    bg_value_pamr: float | None = None
    bg_words: tuple[str, ...] = STUFF_WORDS
    pamr: bool = False
    pamr_iterations: int = 10
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    labelling: str = "none"
    num_clusters: int | None = None
    batch_size: int = 1
    workers: int = 2
    batch_windows: int = 8
    amp: bool = False
    per_dataset: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> Protocol:
        """Raise ConfigError (a ValueError) naming the first inconsistent setting; returns self."""
        for name, allowed in (("mode", MODES), ("background", BACKGROUND_RULES), ("labelling", LABELLINGS),
                              ("activation", ACTIVATIONS), ("window_merge", WINDOW_MERGES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"protocol {self.name!r}: {name} must be one of {allowed}, "
                                  f"got {getattr(self, name)!r}")
        if self.short_side is not None and self.size is not None:
            raise ConfigError(f"protocol {self.name!r}: set short_side or size, not both")
        for name in ("center_crop", "short_side", "size_multiple", "num_clusters"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ConfigError(f"protocol {self.name!r}: {name} must be positive, got {value}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ConfigError(f"protocol {self.name!r}: size must be two positive ints (H, W), got {self.size}")
        if min(self.crop, self.stride, self.batch_size, self.batch_windows, self.pamr_iterations) < 1:
            raise ConfigError(f"protocol {self.name!r}: crop, stride, batch_size, batch_windows and "
                              "pamr_iterations must be positive")
        if self.stride > self.crop:
            raise ConfigError(f"protocol {self.name!r}: stride {self.stride} > crop {self.crop} leaves pixels "
                              "uncovered")
        if self.workers < 0 or not self.pamr_dilations or min(self.pamr_dilations) < 1:
            raise ConfigError(f"protocol {self.name!r}: workers must be >= 0 and pamr_dilations positive")
        if self.background == "stuff" and not self.bg_words:
            raise ConfigError(f"protocol {self.name!r}: background 'stuff' needs bg_words")
        for key in self.per_dataset.values():
            _check_keys(key, f"per_dataset entry of protocol {self.name!r}")
        return self

    @property
    def effective_bg_value(self) -> float:
        """The constant background channel in use (``bg_value_pamr`` when PAMR is on and it is set)."""
        return self.bg_value_pamr if self.pamr and self.bg_value_pamr is not None else self.bg_value

    # -- dataset resolution and overrides --------------------------------------------------
    def resolve(self, dataset: str | None) -> Protocol:
        """A copy with this dataset's ``per_dataset`` values applied and the table dropped."""
        values = self.to_dict()
        table = values.pop("per_dataset")
        canonical = {canonical_dataset(k): v for k, v in table.items()}
        key = canonical_dataset(dataset)
        values.update(canonical.get(key, {}))
        values["dataset"] = dataset if dataset is not None else self.dataset
        return Protocol.from_dict(values)

    def with_overrides(self, overrides: list[str] | dict | None) -> Protocol:
        """A copy with ``key=value`` strings (values parsed as YAML) or a dict applied."""
        if not overrides:
            return Protocol.from_dict(self.to_dict())
        if not isinstance(overrides, dict):
            overrides = parse_key_values(overrides)
        _check_keys(overrides, "override")
        return Protocol.from_dict({**self.to_dict(), **overrides})

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON/YAML types (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict) -> Protocol:
        """Inverse of :meth:`to_dict`; unknown keys raise ConfigError with close matches."""
        _check_keys(values, "protocol")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
        return cls(**kwargs)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of :meth:`to_dict`, also written to ``path`` if given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> Protocol:
        """A protocol from YAML text or a .yaml file."""
        text, where = str(text_or_path), "protocol YAML"
        if isinstance(text_or_path, Path) or (text.endswith((".yaml", ".yml")) and "\n" not in text):
            path = Path(text_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: protocol file not found")
            text, where = path.read_text(), str(path)
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: a protocol YAML must be a mapping of field: value, "
                              f"got {type(values).__name__}")
        return cls.from_dict(values)


_FIELDS = tuple(f.name for f in dataclasses.fields(Protocol))


def _check_keys(values: dict, what: str) -> None:
    for key in values:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), _FIELDS, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {what} key {key!r}.{hint} Known keys: {', '.join(_FIELDS)}")


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(name: str, value, hint):
    """Convert a YAML/JSON/command-line value to the field's declared type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
            items = [x.strip() if isinstance(x, str) else x for x in items]
            inner = args[0]
            return tuple(inner(x) for x in items if x != "")
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError("expected a mapping")
            return {str(k): dict(v) for k, v in value.items()}
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "yes", "on", "1")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return hint(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"protocol field {name!r}: cannot read {value!r} as {hint}") from err


# -- presets -------------------------------------------------------------------------------
_WITH_BACKGROUND = ("voc", "context60", "coco_object")

PRESETS: dict[str, dict] = {
    "default": dict(name="default"),
    # GroupViT's released harness (also OVSegmentor, SegCLIP, S-Seg's comparisons).
    "groupvit": dict(
        name="groupvit", short_side=448, mode="slide", crop=448, stride=224, templates="single",
        per_dataset={
            "voc": dict(background="threshold", bg_threshold=0.95),
            "context60": dict(background="threshold", bg_threshold=0.35),
            "coco_object": dict(background="threshold", bg_threshold=0.95),
        }),
    # TCL: independent sigmoid masks per class, a constant background channel prepended.
    "tcl": dict(
        name="tcl", short_side=448, mode="slide", crop=448, stride=224, templates="tcl", activation="sigmoid",
        bg_value=0.5, bg_value_pamr=0.4,
        per_dataset={d: dict(background="constant") for d in _WITH_BACKGROUND}),
    # The SCLIP family (ProxyCLIP's settings): mmsegmentation based, stuff words as background.
    "sclip-family": dict(
        name="sclip-family", short_side=336, mode="slide", crop=336, stride=112, templates="imagenet80",
        logit_scale=40.0,
        per_dataset={
            "voc": dict(background="stuff", bg_threshold=0.2),
            "context60": dict(background="stuff", bg_words=["background"], bg_threshold=0.15),
            "coco_object": dict(background="stuff", bg_threshold=0.25),
            "ade20k": dict(short_side=448),
            "cityscapes": dict(short_side=448),
        }),
    # UniMatch V2: whole image at a multiple of 14; Cityscapes slides 798/532 at full resolution.
    "unimatch": dict(
        name="unimatch", mode="whole", size_multiple=14,
        per_dataset={"cityscapes": dict(mode="slide", crop=798, stride=532, size_multiple=None,
                                        window_merge="probabilities")}),
    # S-Seg (and any model whose scores are already class probabilities): whole image at its own size.
    "sseg": dict(name="sseg", activation="identity"),
    # STEGO: resize to 320, centre crop 320, clusters matched to classes by the Hungarian method.
    "stego": dict(name="stego", center_crop=320, mode="whole", labelling="hungarian"),
}


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return list(PRESETS)


def get_preset(name: str) -> Protocol:
    """A built-in preset by name (per-dataset table still unresolved)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown protocol preset {name!r}.{hint} Presets: {', '.join(PRESETS)}")
    return Protocol.from_dict(PRESETS[name])


def load_protocol(preset: str | Path | None = None, dataset: str | None = None,
                  overrides: list[str] | dict | None = None) -> Protocol:
    """Preset name or YAML file -> resolved for ``dataset`` -> overrides applied."""
    if preset is None:
        base = Protocol(name="default")
    elif str(preset) in PRESETS:
        base = get_preset(str(preset))
    elif str(preset).endswith((".yaml", ".yml")):
        base = Protocol.from_yaml(Path(preset))
    else:
        base = get_preset(str(preset))  # raises with the list of presets
    return base.resolve(dataset).with_overrides(overrides)
