"""S-Seg's run configuration: every setting, its default (the paper's where the paper states one) and
the checks that refuse settings which cannot work."""

from __future__ import annotations

from dataclasses import dataclass, field

from leafseg.heads.maskformer import pooling_mode


# ----------------------------------------------------------------------------------- config
@dataclass
class SSegConfig:
    """Every setting of a run; defaults follow the paper (see docs/sseg.md for the sources)."""

    # image-text data
    data_layout: str = "tar"                 # tar (img2dataset shards) | folder (captions.jsonl)
    data: str = "data/cc12m"                 # shards: folder, glob, {000..099} range; or the folder
    data_split: str | None = "train"         # folder layout: records of this split (null: all)
    data_limit: int | None = None            # folder layout: the first n records
    synthetic: dict = field(default_factory=dict)  # {train, val, size, seed}: write a synthetic world to `data`
                                             # (if it holds none yet)
    image_size: int = 448
    random_crop: bool = True
    flip: bool = True
    shuffle_buffer: int = 2000
    num_workers: int = 4
    # pseudo-mask generator (section 3.4)
    pm_backbone: str = "dino_vits8"          # a registry name, or pixels4 / pixels8 (RGB k-means)
    pm_weights: str | None = None
    pm_overrides: dict = field(default_factory=dict)
    pm_k: int = 8
    pm_layer: int = -1
    pm_kind: str = "tokens"
    pm_size: int | None = None               # square side the generator's input is resized to
    pm_cache: bool = False                   # precompute once (centred views) into out_dir/pseudo_masks
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
    pool: str = "mean_project"               # image embedding: mean_project (project the mean mask feature)
                                             # | project_mean (mean of the projected mask features)
    # text encoder
    text_encoder: str = "scratch"            # scratch | minilm
    tokenizer: str = "bpe"                   # scratch encoder's vocabulary: bpe (trained on captions) | minilm
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
    # evaluation (the harness, leafseg.eval.harness)
    eval_dataset: str | None = None          # a leafseg dataset name (synthetic, voc, ...)
    eval_root: str = ""
    eval_split: str = "val"
    eval_templates: str = "single"
    eval_background: str = "none"            # none | threshold (GroupViT's rule)
    eval_bg_threshold: float = 0.0
    eval_short_side: int | None = None
    eval_mode: str = "whole"
    eval_batch_size: int = 1
    eval_every: int = 0                      # iterations between evaluations (0: at the end only)
    # system
    device: str = "auto"
    amp: str = "auto"                        # auto: bf16 autocast on CUDA | bf16 | off
    deterministic: bool | str = "auto"       # auto: on for CPU
    seed: int = 0
    out_dir: str = "runs/sseg"
    save_every: int = 1000
    stop_after: int = 0                      # stop abruptly after this iteration, as if killed (tests)
    log_every: int = 20
    progress: bool = True


def check_config(cfg: SSegConfig) -> None:
    """Refuse settings that cannot work, before any work is done."""
    if cfg.text_encoder not in ("scratch", "minilm") or cfg.tokenizer not in ("bpe", "minilm"):
        raise ValueError("text_encoder must be scratch|minilm and tokenizer bpe|minilm")
    if cfg.pm_cache and cfg.random_crop:
        raise ValueError("cached pseudo-masks are made on centred views: set random_crop=false with pm_cache=true")
    if cfg.amp not in ("auto", "bf16", "off") or cfg.eval_background not in ("none", "threshold"):
        raise ValueError("amp must be auto|bf16|off and eval_background none|threshold")
    pooling_mode(cfg.mask_pooling)
    if cfg.noun_prompts < 0:
        raise ValueError(f"noun_prompts must be >= 0, got {cfg.noun_prompts}")
