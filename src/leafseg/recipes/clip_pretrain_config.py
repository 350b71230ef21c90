"""The CLIP pretraining run's configuration: every setting, its default (CLIP's and OpenCLIP's for a
ViT-B/16, see docs/clip_pretrain.md for the sources) and the checks that refuse settings which cannot work.

Sections: ``data`` (the training pairs), ``augment`` (the random resized crop + flip), ``vision`` and
``text`` (the two towers), ``retrieval`` (the held-out pairs scored by recall at 1), ``maskclip`` (the
zero-shot segmenter over the trained CLIP) and ``eval`` (the harness on a segmentation dataset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from leafseg.errors import ConfigError
from leafseg.eval.settings import EvalSettings
from leafseg.training.settings import RunSettings, SyntheticSpec


@dataclass
class DataSettings:
    """The image-text pairs trained on (:mod:`leafseg.data.imagetext`)."""

    layout: Literal["tar", "folder"] = "tar"  # tar (img2dataset / webdataset shards) | folder (captions.jsonl)
    path: str = "data/cc12m"                 # shards: a folder, glob or {000..099} range; or the folder
    split: str | None = "train"              # folder layout: records of this split (null: all)
    limit: int | None = None                 # folder layout: the first n records
    synthetic: SyntheticSpec | None = None   # {train, val, size, seed}: write a synthetic world to `path` first
    random_crop: bool = True                 # the square view's position along the long side: random | centred
    shuffle_buffer: int = 2000
    num_workers: int = 4

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be at least 1 (or null), got {self.limit}")
        if self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ConfigError(f"data.num_workers and data.shuffle_buffer must be >= 0, got {self.num_workers} "
                              f"and {self.shuffle_buffer}")


@dataclass
class AugmentSettings:
    """Each training image: a random crop of ``scale`` of its area and aspect ``ratio``, resized to the
    model's input, then flipped with probability ``flip``."""

    scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # OpenCLIP's default
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip: float = 0.5

    def __post_init__(self):
        for key in ("scale", "ratio"):
            pair = getattr(self, key)
            if len(pair) != 2 or not 0 < pair[0] <= pair[1] or (key == "scale" and pair[1] > 1):
                bound = " <= 1" if key == "scale" else ""
                raise ConfigError(f"augment.{key} must be two numbers 0 < low <= high{bound}, got {pair}")
        if not 0 <= self.flip <= 1:
            raise ConfigError(f"augment.flip is a probability in [0, 1], got {self.flip}")


@dataclass
class VisionSettings:
    """The image tower: a ViT of ``layers`` blocks of ``width`` channels over ``patch_size`` patches."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0


@dataclass
class TextSettings:
    """The text tower (a causal transformer pooled at the end-of-text token) and its byte-level BPE,
    trained on the first ``tokenizer_captions`` training captions unless ``tokenizer`` names a saved one."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    context_length: int = 77                 # tokens, start and end included
    vocab_size: int = 49408                  # at most; specials included (a small corpus may give fewer)
    min_frequency: int = 2                   # merges seen fewer times are not learnt
    tokenizer_captions: int = 1_000_000
    tokenizer: str | None = None             # a tokenizer.json saved by an earlier run (null: train one)


@dataclass
class RetrievalSettings:
    """Zero-shot image-text recall at 1 on held-out pairs (:mod:`leafseg.eval.retrieval`)."""

    path: str | None = None                  # pairs in data.layout (null: data.path, folder layout only)
    split: str | None = "val"                # folder layout: records of this split
    limit: int = 0                           # pairs scored (0: no retrieval)
    batch_size: int = 64

    def __post_init__(self):
        if self.limit < 0 or self.batch_size < 1:
            raise ConfigError(f"retrieval.limit must be >= 0 and retrieval.batch_size >= 1, got {self.limit} "
                              f"and {self.batch_size}")


@dataclass
class MaskClipSettings:
    """MaskCLIP over the trained CLIP (:class:`leafseg.eval.clip_methods.MaskClip`): keep the last block's
    residual and MLP (MaskCLIP's released code) or not (the reduced block of ClearCLIP)."""

    residual: bool = True
    ffn: bool = True


# ----------------------------------------------------------------------------------- config
@dataclass
class ClipConfig(RunSettings):
    """Every setting of a CLIP pretraining run; defaults: ViT-B/16 at 224 with CLIP's text tower, trained
    with OpenCLIP's optimiser settings."""

    data: DataSettings = field(default_factory=DataSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    vision: VisionSettings = field(default_factory=VisionSettings)
    text: TextSettings = field(default_factory=TextSettings)
    embed_dim: int = 512                     # the joint image-text space
    activation: Literal["gelu", "quick_gelu"] = "gelu"  # OpenCLIP's from-scratch towers use GELU
    init_temperature: float = 0.07           # logit scale starts at ln(1 / 0.07)
    max_logit_scale: float = 100.0           # and is clamped at ln(100) after every step
    # optimisation: AdamW, weight decay on matrices only, linear warm-up then cosine decay
    batch_size: int = 256                    # per process; the negatives are gathered from every process
    iterations: int = 171_384
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup: int = 10_000
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0                   # 0: off
    # evaluation: recall at 1 on held-out pairs and MaskCLIP through the harness on eval.dataset (null: no
    # segmentation); eval.every: iterations between evaluations (0: at the end only)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    maskclip: MaskClipSettings = field(default_factory=MaskClipSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    # system (RunSettings) with this recipe's defaults
    out_dir: str = "runs/clip"


def _positive(cfg: ClipConfig, *keys: str) -> None:
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value}")


def check_config(cfg: ClipConfig) -> None:
    """Refuse settings that cannot work, naming the key, before any work is done (types and choices are
    checked on load)."""
    v, t = cfg.vision, cfg.text
    _positive(cfg, "vision.image_size", "vision.patch_size", "vision.width", "vision.layers", "vision.heads",
              "vision.mlp_ratio", "text.width", "text.layers", "text.heads", "text.mlp_ratio", "embed_dim",
              "iterations", "lr", "eps", "init_temperature", "max_logit_scale", "text.min_frequency",
              "text.tokenizer_captions")
    for tower in ("vision", "text"):
        settings = getattr(cfg, tower)
        if settings.width % settings.heads:
            raise ConfigError(f"{tower}.width ({settings.width}) must be a multiple of {tower}.heads "
                              f"({settings.heads})")
    if v.image_size % v.patch_size:
        raise ConfigError(f"vision.image_size ({v.image_size}) must be a multiple of vision.patch_size "
                          f"({v.patch_size})")
    if t.context_length < 3:
        raise ConfigError(f"text.context_length must be at least 3 (start, a token, end), got {t.context_length}")
    if t.vocab_size < 260:
        raise ConfigError(f"text.vocab_size must be at least 260 (the 256 bytes, 3 special tokens and a merge), "
                          f"got {t.vocab_size}")
    if cfg.batch_size < 2:
        raise ConfigError(f"batch_size must be at least 2 (a pair needs in-batch negatives), got {cfg.batch_size}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0 or cfg.warmup < 0 or not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"weight_decay, grad_clip and warmup must be >= 0 and min_lr_ratio in [0, 1], got "
                          f"{cfg.weight_decay}, {cfg.grad_clip}, {cfg.warmup} and {cfg.min_lr_ratio}")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"betas must be two numbers in [0, 1), got {cfg.betas}")
    if cfg.max_logit_scale < 1:
        raise ConfigError(f"max_logit_scale must be at least 1 (a temperature of at most 1), got {cfg.max_logit_scale}")
    if cfg.retrieval.limit and cfg.retrieval.path is None and cfg.data.layout == "tar":
        raise ConfigError("retrieval.path: the tar layout holds no validation split; name held-out shards "
                          "(retrieval.path=...) or turn retrieval off (retrieval.limit=0)")
    if cfg.eval.dataset and not cfg.eval.root:
        raise ConfigError(f"eval.root: the folder of eval.dataset {cfg.eval.dataset!r} is needed")
