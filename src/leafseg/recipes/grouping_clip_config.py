"""The run configuration of "group, then recognise" (region-level adaptation of CLIP): every setting, its
default (the paper's where it states one, docs/grouping_clip.md for the others) and the checks that refuse
settings which cannot work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from leafseg.errors import ConfigError
from leafseg.eval.settings import EvalSettings
from leafseg.training.settings import RunSettings, SyntheticSpec


@dataclass
class ClipSettings:
    """The recognition model: a CLIP, frozen (only the region tokens and the temperature learn)."""

    backbone: str = "clip_vitb16"            # a clip_* registry name
    weights: str | None = None               # folder, file or Hub id with the tokenizer; null: the local cache


@dataclass
class GroupingSettings:
    """The grouping: per-image k-means of a frozen self-supervised encoder's patch features (section 3.1)."""

    backbone: str = "dino_vitb8"             # a registry name, or pixels4 / pixels8 (RGB cells)
    weights: str | None = None
    num_regions: int = 27                    # M, also the number of region tokens
    layer: int = -1
    kind: Literal["tokens", "keys", "queries", "values"] = "tokens"
    seed: int = 0                            # the k-means draws

    def __post_init__(self):
        if self.num_regions < 1:
            raise ConfigError(f"grouping.num_regions must be at least 1, got {self.num_regions}")


@dataclass
class RecognitionSettings:
    """How CLIP embeds the regions (:class:`leafseg.backbones.RegionEncoder`)."""

    mode: Literal["context", "pixels", "drop"] = "context"   # Fig. 5 (c), (a), (b)
    masked_blocks: int | Literal["all"] = "all"   # the last k blocks use the region masks
    threshold: float = 0.5                   # a patch belongs to a region where the resized mask is >= it

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"recognition.threshold must be in (0, 1], got {self.threshold}")
        if isinstance(self.masked_blocks, int) and self.masked_blocks < 1:
            raise ConfigError(f"recognition.masked_blocks must be at least 1 or 'all', got {self.masked_blocks}")


@dataclass
class LossSettings:
    """The noun-region contrastive loss (section 3.2) and the nouns it reads from the captions."""

    direction: Literal["noun_to_region", "region_to_noun", "both"] = "noun_to_region"
    init_temperature: float = 0.07
    max_nouns: int | None = None             # the first nouns of a caption (null: all)
    templates: str = "imagenet80"            # prompt templates of the nouns (leafseg.eval.prompts names)
    vocab_size: int = 1000                   # the noun vocabulary read from the training captions
    vocab_captions: int = 200_000            # captions read to build it

    def __post_init__(self):
        from leafseg.eval.prompts import TEMPLATE_SETS

        if self.templates not in TEMPLATE_SETS:
            raise ConfigError(f"loss.templates must be one of {', '.join(TEMPLATE_SETS)}, got {self.templates!r}")
        if self.init_temperature <= 0:
            raise ConfigError(f"loss.init_temperature must be positive, got {self.init_temperature}")
        if self.max_nouns is not None and self.max_nouns < 1:
            raise ConfigError(f"loss.max_nouns must be at least 1 (or null for all), got {self.max_nouns}")
        if self.vocab_size < 1 or self.vocab_captions < 1:
            raise ConfigError(f"loss.vocab_size and loss.vocab_captions must be at least 1, got "
                              f"{self.vocab_size} and {self.vocab_captions}")


@dataclass
class GroupingClipConfig(RunSettings):
    """Every setting of a run; defaults follow the paper (docs/grouping_clip.md names the sources)."""

    # image-text data (the layouts of leafseg.data.imagetext, as S-Seg reads them)
    data_layout: Literal["tar", "folder"] = "tar"  # tar (webdataset shards) | folder (captions.jsonl)
    data: str = "data/cc12m"                 # shards: folder, glob, {000..099} range; or the folder
    data_split: str | None = "train"         # folder layout: records of this split (null: all)
    data_limit: int | None = None            # folder layout: the first n records
    synthetic: SyntheticSpec | None = None   # {train, val, size, seed}: write a synthetic world to `data`
    image_size: int = 224
    random_crop: bool = True
    shuffle_buffer: int = 2000
    num_workers: int = 4
    # the three parts: grouping, recognition, and the loss that adapts the recognition
    clip: ClipSettings = field(default_factory=ClipSettings)
    grouping: GroupingSettings = field(default_factory=GroupingSettings)
    recognition: RecognitionSettings = field(default_factory=RecognitionSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    # optimisation (section 4.1: AdamW, lr 5e-4, weight decay 0.01, batch 2048)
    batch_size: int = 256                    # per process
    iterations: int = 29_300                 # ~5 epochs of CC12M at 2048 pairs per step
    lr: float = 5e-4
    weight_decay: float = 0.01               # on the region tokens (not on the temperature)
    warmup: int = 0
    min_lr_ratio: float = 0.0                # cosine decay to lr * min_lr_ratio (1: constant after warm-up)
    grad_clip: float = 0.0                   # 0: off
    # evaluation: the harness with the grouping_clip method and the run's current tokens; eval.every:
    # iterations between evaluations (0: at the end only); no eval.dataset: no evaluation
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(preset="groupvit"))
    out_dir: str = "runs/grouping_clip"


def check_config(cfg: GroupingClipConfig) -> None:
    """Refuse settings that cannot work, before any work is done (types and choices are checked on load)."""
    from leafseg.backbones import get_spec

    if get_spec(cfg.clip.backbone).family != "clip":
        raise ConfigError(f"clip.backbone must be a CLIP (clip_*), got {cfg.clip.backbone!r}")
    if not cfg.grouping.backbone.startswith("pixels"):
        get_spec(cfg.grouping.backbone)  # an unknown name fails here, with close matches
    if cfg.batch_size < 1 or cfg.iterations < 1:
        raise ConfigError(f"batch_size and iterations must be at least 1, got {cfg.batch_size} and {cfg.iterations}")
    if cfg.warmup < 0 or not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ConfigError(f"need warmup >= 0 and min_lr_ratio in [0, 1], got {cfg.warmup} and {cfg.min_lr_ratio}")
    if cfg.image_size < 16:
        raise ConfigError(f"image_size must be at least 16, got {cfg.image_size}")
