"""S-Seg's run configuration: every setting, its default (the paper's where the paper states one) and
the checks that refuse settings which cannot work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from leafseg.errors import ConfigError
from leafseg.eval.settings import EvalSettings
from leafseg.heads.maskformer import pooling_mode
from leafseg.training.settings import RunSettings, SyntheticSpec


@dataclass
class PseudoMaskSettings:
    """The frozen encoder + per-image k-means of section 3.4 that makes the training masks."""

    backbone: str = "dino_vits8"             # a registry name, or pixels4 / pixels8 (RGB k-means)
    weights: str | None = None
    arch_overrides: dict = field(default_factory=dict)
    k: int = 8
    layer: int = -1
    kind: Literal["tokens", "keys", "queries", "values"] = "tokens"
    size: int | None = None                  # square side the generator's input is resized to
    cache: bool = False                      # precompute once (centred views) into out_dir/pseudo_masks

    def __post_init__(self):
        if self.k < 2:
            raise ConfigError(f"pseudo_masks.k must be at least 2, got {self.k}")


# ----------------------------------------------------------------------------------- config
@dataclass
class SSegConfig(RunSettings):
    """Every setting of a run; defaults follow the paper (see docs/sseg.md for the sources)."""

    # image-text data
    data_layout: Literal["tar", "folder"] = "tar"  # tar (img2dataset shards) | folder (captions.jsonl)
    data: str = "data/cc12m"                 # shards: folder, glob, {000..099} range; or the folder
    data_split: str | None = "train"         # folder layout: records of this split (null: all)
    data_limit: int | None = None            # folder layout: the first n records
    synthetic: SyntheticSpec | None = None   # {train, val, size, seed}: write a synthetic world to `data`
                                             # (if it holds none yet)
    image_size: int = 448
    random_crop: bool = True
    flip: bool = True
    shuffle_buffer: int = 2000
    num_workers: int = 4
    # pseudo-mask generator (section 3.4)
    pseudo_masks: PseudoMaskSettings = field(default_factory=PseudoMaskSettings)
    # MaskFormer (section 4.1)
    backbone: str = "dino_vits16"
    weights: str | None = "random"
    arch_overrides: dict = field(default_factory=dict)
    layers: list | None = None
    strides: list = field(default_factory=lambda: [4, 8, 16, 32])
    memory_level: int = -1                   # pyramid level the queries attend to (-1: lowest resolution)
    masked_attention: bool = False           # Mask2Former's masked cross-attention (not in the paper)
    mask_pooling: bool | str = False         # off | add (true) | only: each query's mask-pooled pixel embedding
                                             # added to, or replacing, its mask feature (not in the paper; docs/sseg.md)
    stem_channels: int = 0                   # >0: a convolutional stem adds local features at stride 4
                                             # (not in the paper; leafseg.heads.stem)
    num_queries: int = 64
    hidden_dim: int = 256
    dec_layers: int = 6
    dec_heads: int = 8
    ffn_dim: int = 2048
    mask_dim: int = 256
    conv_dim: int = 256
    embed_dim: int = 256                     # the joint image-text space
    # image embedding: mean_project (project the mean mask feature) | project_mean (mean of the projected ones)
    pool: Literal["mean_project", "project_mean"] = "mean_project"
    # text encoder
    text_encoder: Literal["scratch", "minilm"] = "scratch"
    tokenizer: Literal["bpe", "minilm"] = "bpe"  # the scratch encoder's vocabulary: bpe (trained on captions)
    tokenizer_path: str | None = None        # a saved BPE tokenizer (default: train, save in out_dir)
    vocab_size: int = 16384
    tokenizer_captions: int = 200_000        # captions read to train the BPE
    text_width: int = 256
    text_layers: int = 12
    text_heads: int = 4
    context_length: int = 77
    text_frozen: bool = True                 # minilm: frozen (cached features) or tuned
    minilm_weights: str | None = None
    # losses (sections 3.4-3.6)
    lambda_mask: float = 1.0
    lambda_contrastive: float = 1.0
    lambda_dice: float = 1.0
    lambda_focal: float = 20.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    deep_supervision: bool = False
    init_temperature: float = 0.07
    noun_prompts: int = 0                    # >0: GroupViT's multi-label loss with this many caption nouns per
                                             # image, prompted (not in the paper; leafseg.text.nouns)
    noun_templates: str = "single"           # prompt templates of the nouns (leafseg.eval.prompts names)
    noun_vocab_size: int = 1000              # nouns read from the training captions
    lambda_noun: float = 1.0
    # optimisation
    batch_size: int = 64                     # per process
    iterations: int = 100_000
    lr: float = 5e-4
    weight_decay: float = 0.05
    text_lr_scale: float = 1.0               # the text encoder's learning rate (not its projection), x lr
    warmup: int = 1000
    min_lr_ratio: float = 0.01               # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0                   # 0: off
    # evaluation: the harness (leafseg.eval.harness) by class name; eval.every: iterations between evaluations
    # (0: at the end only); no eval.dataset: no evaluation
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(preset="sseg"))
    # system (RunSettings) with this recipe's defaults
    out_dir: str = "runs/sseg"

    RENAMED = {
        "pm_backbone": "pseudo_masks.backbone", "pm_weights": "pseudo_masks.weights",
        "pm_overrides": "pseudo_masks.arch_overrides", "pm_k": "pseudo_masks.k", "pm_layer": "pseudo_masks.layer",
        "pm_kind": "pseudo_masks.kind", "pm_size": "pseudo_masks.size", "pm_cache": "pseudo_masks.cache",
        "eval_dataset": "eval.dataset", "eval_root": "eval.root", "eval_split": "eval.split",
        "eval_every": "eval.every", "eval_templates": "eval.protocol.templates",
        "eval_background": "eval.protocol.background", "eval_bg_threshold": "eval.protocol.bg_threshold",
        "eval_short_side": "eval.protocol.short_side", "eval_mode": "eval.protocol.mode",
        "eval_batch_size": "eval.protocol.batch_size",
    }


def check_config(cfg: SSegConfig) -> None:
    """Refuse settings that cannot work, before any work is done (types and choices are checked on load)."""
    from leafseg.backbones.build import check_arch_overrides

    check_arch_overrides(cfg.backbone, cfg.arch_overrides)
    if not cfg.pseudo_masks.backbone.startswith("pixels"):
        check_arch_overrides(cfg.pseudo_masks.backbone, cfg.pseudo_masks.arch_overrides, "pseudo_masks.arch_overrides")
    if cfg.pseudo_masks.cache and cfg.random_crop:
        raise ConfigError("cached pseudo-masks are made on centred views: set random_crop=false with "
                          "pseudo_masks.cache=true")
    try:
        pooling_mode(cfg.mask_pooling)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.noun_prompts < 0:
        raise ConfigError(f"noun_prompts must be >= 0, got {cfg.noun_prompts}")
    if cfg.batch_size < 1 or cfg.iterations < 1:
        raise ConfigError(f"batch_size and iterations must be at least 1, got {cfg.batch_size} and {cfg.iterations}")
