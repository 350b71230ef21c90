"""S-Seg (Huang et al., "Exploring Simple Open-Vocabulary Semantic Segmentation"): MaskFormer from
pseudo-masks and language, with no mask labels and no CLIP.

Reads top to bottom like the paper: config -> image-text data -> pseudo-masks (a frozen encoder +
per-image k-means, on the fly or cached) -> model (MaskFormer without class head, a text
transformer from scratch, 2-layer MLP projections, a learned temperature) -> one training step
(Hungarian matching to the pseudo-masks, L_mask = dice + 20 focal on matched pairs only; symmetric
contrastive loss between the mean of the mask features and the caption) -> loop -> checkpoint ->
evaluation (class names x templates -> per-mask class probabilities -> sum over queries of class
probability x mask probability; background by a threshold).

    from leafseg.recipes.sseg import run, segment
    result = run("configs/sseg/synthetic.yaml", ["out_dir=runs/sseg"])
    segment("photo.jpg", ["cat", "dog", "grass"], "runs/sseg/final.pt", "out/")

Distributed: launch with ``torchrun --nproc_per_node N``; ``batch_size`` is per process and the
contrastive negatives are gathered from every process.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from leafseg.data.imagetext import build_image_text, cache_regions, collate_image_text
from leafseg.eval.methods import Segmenter, register_model_loader
from leafseg.eval.prompts import reduce_queries, text_embeddings
from leafseg.heads.maskformer import MLP, build_maskformer, semantic_inference
from leafseg.losses.contrastive import ContrastiveLoss
from leafseg.losses.matching import MaskMatchingLoss
from leafseg.training import (
    MetricsLog,
    cleanup_distributed,
    config_dict,
    init_distributed,
    load_checkpoint,
    load_config,
    progress,
    rng_states,
    save_checkpoint,
    save_config,
    seed_everything,
    set_reproducible,
    set_rng_states,
)
from leafseg.training.runinfo import run_record, write_json


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
    # optimisation
    batch_size: int = 64                     # per process
    iterations: int = 100_000
    lr: float = 5e-4
    weight_decay: float = 0.05
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


# ------------------------------------------------------------------------------------- data
def image_text_source(cfg: SSegConfig, *, shuffle: bool = True, regions_dir=None, rank=None, world_size=None):
    """The training pairs as a streaming source (see :mod:`leafseg.data.imagetext`)."""
    kw = dict(image_size=cfg.image_size, shuffle_buffer=cfg.shuffle_buffer if shuffle else 0, seed=cfg.seed,
              random_crop=cfg.random_crop and regions_dir is None and shuffle, regions_dir=regions_dir,
              rank=rank, world_size=world_size)
    if cfg.data_layout == "folder":
        kw.update(split=cfg.data_split, n=cfg.data_limit)
    return build_image_text(cfg.data_layout, cfg.data, **kw)


def build_tokenizer_for(cfg: SSegConfig, out: Path, info):
    """The scratch encoder's tokenizer: MiniLM's WordPiece, a saved BPE, or a BPE trained on the
    captions (by the main rank, saved to ``out/tokenizer.json``, read by the others)."""
    from leafseg.text import build_tokenizer

    if cfg.text_encoder != "scratch":
        return None
    if cfg.tokenizer == "minilm":
        return build_tokenizer("minilm", context_length=cfg.context_length)
    path = Path(cfg.tokenizer_path) if cfg.tokenizer_path else out / "tokenizer.json"
    if info.is_main and not path.is_file():
        captions = image_text_source(cfg, shuffle=False, rank=0, world_size=1).captions(cfg.tokenizer_captions)
        build_tokenizer("bpe", texts=captions, path=path, vocab_size=cfg.vocab_size,
                        context_length=cfg.context_length)
    if info.distributed:
        dist.barrier()
    return build_tokenizer("bpe", path=path, context_length=cfg.context_length)


def build_pseudo_mask_generator(cfg: SSegConfig, device):
    """The frozen encoder + k-means of section 3.4, on ``device``."""
    from leafseg.backbones import build_backbone
    from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor

    if cfg.pm_overrides:
        encoder = build_backbone(cfg.pm_backbone, weights=cfg.pm_weights, device=str(device),
                                 arch_overrides=cfg.pm_overrides)
    else:
        encoder = build_feature_extractor(cfg.pm_backbone, weights=cfg.pm_weights, device=str(device))
    size = (cfg.pm_size, cfg.pm_size) if cfg.pm_size else None
    return PseudoMaskGenerator(encoder.eval().requires_grad_(False), k=cfg.pm_k, layer=cfg.pm_layer,
                               kind=cfg.pm_kind, seed=cfg.seed, feature_size=size)


def cache_pseudo_masks(cfg: SSegConfig, generator, folder: Path, info) -> Path:
    """Region maps of every training pair's centred view, one PNG per key (each rank its share)."""
    if not (folder / "complete").exists():
        source = image_text_source(cfg, shuffle=False, rank=info.rank, world_size=info.world_size)
        cache_regions(source, generator, folder, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                      device=info.device)
        if info.distributed:
            dist.barrier()
        if info.is_main:
            (folder / "complete").write_text("done\n")
    return folder


# ------------------------------------------------------------------------------------ model
class SSegModel(nn.Module):
    """MaskFormer + text encoder + 2-layer MLP projections into one space + learned temperature.

    forward(images (B, 3, H, W) in [0, 1], captions: B str or None, timer) -> dict: ``masks``
    (B, N, h, w) logits, ``features`` (B, N, D), ``aux`` (earlier layers), and with captions
    ``image_embedding`` (B, E) = projection of the mean mask feature, ``text_embedding`` (B, E),
    ``logit_scale`` (scalar). Embeddings are not normalised.
    """

    def __init__(self, maskformer: nn.Module, text: nn.Module, *, embed_dim: int = 256,
                 init_temperature: float = 0.07, pool: str = "mean_project"):
        super().__init__()
        if pool not in ("mean_project", "project_mean"):
            raise ValueError(f"pool must be mean_project or project_mean, got {pool!r}")
        self.maskformer, self.text, self.pool = maskformer, text, pool
        dim = maskformer.decoder.norm.normalized_shape[0]
        self.image_proj = MLP(dim, dim, embed_dim, 2)
        self.text_proj = MLP(text.out_dim, text.out_dim, embed_dim, 2)
        self.contrastive = ContrastiveLoss(init_temperature)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """texts (T str) -> (T, E) joint-space embeddings (not normalised)."""
        return self.text_proj(self.text(list(texts)).float())

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """texts -> (T, E) unit embeddings (what :func:`leafseg.eval.prompts.text_embeddings` calls)."""
        return F.normalize(self.embed_text(texts), dim=-1)

    def forward(self, images: torch.Tensor, captions: list[str] | None = None, timer=None) -> dict:
        timer = timer or _no_timer
        with timer("backbone"):
            maps = self.maskformer.backbone(images)
        with timer("heads"):
            out = self.maskformer.decode(maps)
        if captions is not None:
            with timer("text"):
                out["text_embedding"] = self.embed_text(captions)
            feats = out["features"].float()
            out["image_embedding"] = (self.image_proj(feats.mean(1)) if self.pool == "mean_project"
                                      else self.image_proj(feats).mean(1))
            out["logit_scale"] = self.contrastive.scale
        return out

    @torch.no_grad()
    def semantic(self, images: torch.Tensor, text: torch.Tensor, query_classes: torch.Tensor | None = None,
                 num_classes: int | None = None) -> torch.Tensor:
        """Class scores (B, C, h, w) = sum over queries of P(class | mask feature) x P(pixel in mask).

        text: (Q, E) unit embeddings of the class names (Q >= C when classes have several names:
        ``query_classes`` (Q,) gives each name's class; a class takes its best name's similarity).
        """
        out = self.maskformer(images)
        feats = F.normalize(self.image_proj(out["features"].float()), dim=-1)  # (B, N, E)
        logits = self.contrastive.scale * feats @ text.to(feats).t()  # (B, N, Q)
        if query_classes is not None:
            c = num_classes or int(query_classes.max()) + 1
            logits = reduce_queries(logits.transpose(1, 2), query_classes, c).transpose(1, 2)
        return semantic_inference(out["masks"], logits.softmax(-1))


def _no_timer(name: str):
    return contextlib.nullcontext()


def build_model(cfg: SSegConfig, tokenizer, device) -> SSegModel:
    """The S-Seg model on ``device`` (train mode)."""
    from leafseg.text import build_text_encoder

    maskformer = build_maskformer(
        cfg.backbone, weights=cfg.weights, device=str(device), arch_overrides=cfg.arch_overrides or None,
        layers=cfg.layers, strides=tuple(cfg.strides), num_queries=cfg.num_queries, hidden_dim=cfg.hidden_dim,
        dec_layers=cfg.dec_layers, heads=cfg.dec_heads, ffn_dim=cfg.ffn_dim, mask_dim=cfg.mask_dim,
        conv_dim=cfg.conv_dim, memory_level=cfg.memory_level, masked_attention=cfg.masked_attention)
    text = build_text_encoder(cfg.text_encoder, tokenizer=tokenizer, width=cfg.text_width, layers=cfg.text_layers,
                              heads=cfg.text_heads, context_length=cfg.context_length,
                              minilm_weights=cfg.minilm_weights, frozen=cfg.text_frozen, device=str(device))
    return SSegModel(maskformer, text, embed_dim=cfg.embed_dim, init_temperature=cfg.init_temperature,
                     pool=cfg.pool).to(device)


def build_criterion(cfg: SSegConfig) -> MaskMatchingLoss:
    return MaskMatchingLoss(cfg.pm_k, dice_weight=cfg.lambda_dice, focal_weight=cfg.lambda_focal,
                            alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)


# ------------------------------------------------------------------------------- train step
def train_step(model, batch: dict, *, generator, criterion: MaskMatchingLoss, cfg: SSegConfig, device,
               amp_dtype=None, timer=None) -> tuple[torch.Tensor, dict]:
    """One iteration's loss. batch: image (B, 3, S, S), caption (B str), optionally regions (B, S, S).
    Returns (L = lambda_mask L_mask + lambda_contrastive L_contrastive, detached parts)."""
    timer = timer or _no_timer
    images = batch["image"].to(device, non_blocking=True)
    with timer("pseudo_masks"):
        regions = batch["regions"].to(device) if "regions" in batch else generator(images)
    if cfg.flip:
        flip = torch.rand(images.shape[0], device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        regions = torch.where(flip[:, None, None], regions.flip(-1), regions)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    with autocast:
        out = model(images, batch["caption"], timer=timer)
    aux = [a["masks"] for a in out["aux"]] if cfg.deep_supervision else None
    mask = criterion(out["masks"].float(), regions, aux, timer=timer)
    with timer("losses"):
        from leafseg.losses.contrastive import contrastive_loss

        con = contrastive_loss(out["image_embedding"], out["text_embedding"], out["logit_scale"])
    loss = cfg.lambda_mask * mask["loss"] + cfg.lambda_contrastive * con
    return loss, {"loss_mask": mask["loss"].detach(), "dice": mask["dice"], "focal": mask["focal"],
                  "loss_contrastive": con.detach(), "scale": out["logit_scale"].detach()}


def learning_rate(cfg: SSegConfig, it: int) -> float:
    """Linear warm-up for ``warmup`` iterations, then cosine decay to ``lr * min_lr_ratio``."""
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    frac = min(1.0, (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup))
    return float(cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))))


# ------------------------------------------------------------------------------- evaluation
class SSegSegmenter(Segmenter):
    """A trained S-Seg model for the harness: ``prepare`` encodes the class names (every name of
    an entry x the protocol's templates); forward(images (B, 3, H, W)) -> class scores (B, C, H/4, W/4)
    (use ``activation: identity``)."""

    def __init__(self, model: SSegModel):
        super().__init__()
        self.model = model
        self.text, self.names_to_classes, self.num_classes = None, None, 0

    def prepare(self, class_names, protocol) -> None:
        emb = text_embeddings(self.model.encode_text, class_names, protocol.templates)
        self.text, self.names_to_classes = emb.embeddings, emb.query_classes
        self.num_classes = len(class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.text is None:
            raise RuntimeError("SSegSegmenter.prepare(class_names, protocol) must be called before inference")
        return self.model.semantic(images, self.text, self.names_to_classes, self.num_classes)


def eval_protocol(cfg: SSegConfig):
    """The evaluation settings of ``cfg`` as a harness protocol."""
    from leafseg.eval.protocol import Protocol

    return Protocol(name="sseg", templates=cfg.eval_templates, activation="identity", background=cfg.eval_background,
                    bg_threshold=cfg.eval_bg_threshold, short_side=cfg.eval_short_side, mode=cfg.eval_mode,
                    crop=cfg.image_size, stride=max(1, cfg.image_size // 2), batch_size=cfg.eval_batch_size,
                    workers=min(cfg.num_workers, 2))


def evaluate_sseg(model: SSegModel, cfg: SSegConfig, device, class_names=None, out_dir=None, dataset=None):
    """Harness evaluation on ``cfg.eval_dataset`` (or ``dataset``); ``class_names`` replace the
    dataset's names as prompts (entries may hold synonyms). Returns the :class:`EvalReport`."""
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import evaluate

    dataset = dataset or build_dataset(cfg.eval_dataset, cfg.eval_root, split=cfg.eval_split)
    was_training = model.training
    report = evaluate(SSegSegmenter(model.eval()), dataset, eval_protocol(cfg), out_dir, progress=False,
                      device=device, class_names=class_names, method_name="sseg", config=config_dict(cfg))
    model.train(was_training)
    return report


# ------------------------------------------------------------------------------- checkpoint
def model_state(model: SSegModel, cfg: SSegConfig) -> dict:
    """The model's tensors, without a frozen MiniLM (rebuilt from its package on load)."""
    state = model.state_dict()
    if cfg.text_encoder == "minilm" and cfg.text_frozen:
        state = {k: v for k, v in state.items() if not k.startswith("text.")}
    return state


def load_model_state(model: SSegModel, state: dict) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("text.encoder.")] + list(unexpected)
    if bad:
        raise ValueError(f"checkpoint does not fit the model: {bad[:5]}")


def load_sseg(path: str | Path, device: str = "cpu") -> tuple[SSegModel, SSegConfig]:
    """A trained model (eval mode) and its config from ``final.pt`` or a training checkpoint."""
    ckpt = load_checkpoint(path, map_location="cpu")
    return _rebuild(ckpt, device)


def _rebuild(ckpt: dict, device) -> tuple[SSegModel, SSegConfig]:
    from leafseg.text import tokenizer_from_state

    if ckpt.get("recipe") != "sseg":
        raise ValueError(f"not an S-Seg checkpoint (recipe {ckpt.get('recipe')!r})")
    cfg = SSegConfig(**{**ckpt["config"], "weights": "random"})
    tokenizer = tokenizer_from_state(ckpt["tokenizer"]) if ckpt.get("tokenizer") else None
    model = build_model(cfg, tokenizer, torch.device(device))
    load_model_state(model, ckpt["model"])
    return model.eval(), cfg


register_model_loader("sseg", lambda ckpt, device: SSegSegmenter(_rebuild(ckpt, device)[0]))


def checkpoint_state(r, cfg: SSegConfig, info, final: bool = False) -> dict:
    """Everything to continue bit for bit (or, ``final``, to rebuild the model for inference)."""
    state = {"recipe": "sseg", "model": model_state(r.model, cfg), "config": config_dict(cfg),
             "tokenizer": r.tokenizer.state() if r.tokenizer is not None else None}
    if not final:
        rng = [rng_states()]
        if info.distributed:
            rng = [None] * info.world_size
            dist.all_gather_object(rng, rng_states())
        state.update(optimizer=r.optimizer.state_dict(), rng=rng, state=dict(r.state), world_size=info.world_size)
    return state


def restore(path: Path, r, info) -> dict:
    """Load a training checkpoint into the run's objects; returns its loop state."""
    ckpt = load_checkpoint(path, map_location=info.device)
    load_model_state(r.model, ckpt["model"])
    r.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["world_size"] == info.world_size:
        rng = ckpt["rng"][info.rank]
        rng["torch"], rng["cuda"] = rng["torch"].cpu(), [s.cpu() for s in rng.get("cuda", [])]
        set_rng_states(rng)
    return dict(ckpt["state"])


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (fresh), True (continue from ``out_dir/checkpoints/last.pt`` if it exists), or a
    checkpoint path. Returns the run's figures (iterations, final losses, eval mIoU, out_dir, ...).
    """
    cfg = load_config(SSegConfig, config_path, overrides)
    check_config(cfg)
    joined = dist.is_available() and dist.is_initialized()
    info = init_distributed(cfg.device)
    try:
        return train(cfg, info, resume)
    finally:
        if not joined:
            cleanup_distributed()


def prepare_run(cfg: SSegConfig, info, resume) -> SimpleNamespace:
    """Seeds, tokenizer, pseudo-mask generator (and cache), model, optimiser, logs, loop state."""
    out = Path(cfg.out_dir)
    amp = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and info.device.type == "cuda") else None
    seed_everything(cfg.seed + info.rank)
    set_reproducible(cfg.deterministic if isinstance(cfg.deterministic, bool) else info.device.type == "cpu")
    if cfg.synthetic and info.is_main and not (Path(cfg.data) / "classes.json").exists():
        from leafseg.data.synthetic import SyntheticWorld

        syn = dict(cfg.synthetic)
        world = SyntheticWorld(seed=syn.get("seed", 0), size=syn.get("size", 64))
        for split in ("train", "val"):
            if syn.get(split):
                world.write(cfg.data, int(syn[split]), split)
    if info.distributed:
        dist.barrier()
    tokenizer = build_tokenizer_for(cfg, out, info)
    generator = build_pseudo_mask_generator(cfg, info.device)
    regions_dir = cache_pseudo_masks(cfg, generator, out / "pseudo_masks", info) if cfg.pm_cache else None
    model = build_model(cfg, tokenizer, info.device)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=cfg.lr)
    r = SimpleNamespace(out=out, amp=amp, tokenizer=tokenizer, generator=generator, regions_dir=regions_dir,
                        model=model, optimizer=optimizer,
                        state={"iteration": 0, "epoch": 0, "batches_done": 0, "skipped": 0},
                        logs=SimpleNamespace(train=MetricsLog(out, "train_log"), eval=MetricsLog(out, "metrics")))
    ckpt = Path(resume) if isinstance(resume, str) else out / "checkpoints" / "last.pt"
    if resume and ckpt.exists():
        r.state = restore(ckpt, r, info)
    elif isinstance(resume, str):
        raise FileNotFoundError(f"checkpoint to resume not found: {ckpt}")
    if info.is_main:
        for log in (r.logs.train, r.logs.eval):
            log.truncate_after(r.state["iteration"])
        save_config(cfg, out / "config.yaml")
        record = run_record(seed=cfg.seed, config=config_dict(cfg), device=info.device)
        record.update(world_size=info.world_size, resumed_from=str(ckpt) if r.state["iteration"] else None)
        write_json(out / "run.json", record)
    r.student = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        r.student = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return r


def batches(cfg: SSegConfig, r, info):
    """Endless (epoch, batch) stream, resuming at ``state['epoch']`` after ``batches_done`` batches."""
    source = image_text_source(cfg, regions_dir=r.regions_dir)
    epoch, skip = r.state["epoch"], r.state["batches_done"]
    while True:
        source.set_epoch(epoch)
        loader = DataLoader(source, batch_size=cfg.batch_size, num_workers=cfg.num_workers, drop_last=True,
                            collate_fn=collate_image_text, pin_memory=info.device.type == "cuda",
                            generator=torch.Generator())  # leaves the global RNG (checkpointed) alone
        count = 0
        for count, batch in enumerate(loader, start=1):
            if count > skip:
                yield epoch, count, source.skipped, batch
        if count == 0:
            raise ValueError(f"{cfg.data}: no full batch of {cfg.batch_size} pairs in an epoch")
        epoch, skip = epoch + 1, 0


def train(cfg: SSegConfig, info, resume: bool | str = False) -> dict:
    """The loop: batches of pairs, one optimiser step each, logs, checkpoints, evaluations."""
    r = prepare_run(cfg, info, resume)
    criterion, s = build_criterion(cfg), r.state
    params = [p for p in r.model.parameters() if p.requires_grad]
    bar = progress(cfg.iterations, s["iteration"], info.is_main and cfg.progress, "sseg")
    running, t0 = [], time.perf_counter()
    for epoch, done, skipped, batch in batches(cfg, r, info):
        if s["iteration"] >= cfg.iterations:
            break
        for group in r.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, s["iteration"])
        loss, parts = train_step(r.student, batch, generator=r.generator, criterion=criterion, cfg=cfg,
                                 device=info.device, amp_dtype=r.amp)
        r.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        r.optimizer.step()
        s.update(iteration=s["iteration"] + 1, epoch=epoch, batches_done=done, skipped=skipped)
        running.append({"loss": loss.detach(), **parts})
        bar.update(1)
        if s["iteration"] % cfg.log_every == 0 or s["iteration"] == cfg.iterations:
            log_train(r, cfg, running, time.perf_counter() - t0, info)
            running, t0 = [], time.perf_counter()
        if cfg.eval_every and cfg.eval_dataset and s["iteration"] % cfg.eval_every == 0:
            log_eval(r, cfg, info)
        if s["iteration"] % cfg.save_every == 0 and s["iteration"] < cfg.iterations:
            ckpt = checkpoint_state(r, cfg, info)
            if info.is_main:
                save_checkpoint(ckpt, r.out / "checkpoints" / "last.pt")
        if cfg.stop_after and s["iteration"] >= cfg.stop_after:
            bar.close()
            return {"stopped_at": s["iteration"], "out_dir": str(r.out)}
    bar.close()
    return finish(r, cfg, info)


def log_train(r, cfg: SSegConfig, running: list[dict], seconds: float, info) -> None:
    """Average the last iterations' losses over them and over ranks; log one row."""
    keys = list(running[0])
    means = torch.stack([torch.stack([row[k].float() for row in running]).mean() for k in keys])
    if info.distributed:
        dist.all_reduce(means)
        means /= info.world_size
    row = {"iteration": r.state["iteration"], **{k: float(v) for k, v in zip(keys, means.tolist(), strict=True)},
           "lr": r.optimizer.param_groups[0]["lr"], "skipped": r.state["skipped"],
           "images_per_second": len(running) * cfg.batch_size * info.world_size / max(seconds, 1e-9)}
    if info.is_main:
        r.logs.train.log(row, step=r.state["iteration"])


def log_eval(r, cfg: SSegConfig, info) -> dict:
    report = evaluate_sseg(r.model, cfg, info.device, out_dir=r.out / "eval" if info.is_main else None)
    row = {"iteration": r.state["iteration"], "miou": report.miou, "acc": report.acc,
           "iou": report.metrics.get("iou")}
    if info.is_main:
        r.logs.eval.log(row, step=r.state["iteration"])
    return row


def finish(r, cfg: SSegConfig, info) -> dict:
    """Final model (``final.pt``), last evaluation, ``results.json``; returns the figures."""
    ckpt = checkpoint_state(r, cfg, info, final=True)
    if info.is_main:
        save_checkpoint(ckpt, r.out / "final.pt")
    last_eval = log_eval(r, cfg, info) if cfg.eval_dataset else {}
    train_log = r.logs.train.rows()
    result = {"iterations": r.state["iteration"], "skipped": r.state["skipped"], "out_dir": str(r.out),
              "checkpoint": str(r.out / "final.pt"), "miou": last_eval.get("miou"),
              "final_train": train_log[-1] if train_log else {}, "train_log": train_log}
    if info.is_main:
        write_json(r.out / "results.json", {k: v for k, v in result.items() if k != "train_log"})
    return result


# ------------------------------------------------------------------------------- inference
def segment(image_path: str | Path, classes: list[str], checkpoint: str | Path, out_dir: str | Path, *,
            templates: str = "single", bg_threshold: float | None = None, device: str = "cpu") -> dict:
    """Label one image with free-form class names; writes ``<stem>_labels.png`` (palette PNG of
    class indices in the order of ``classes``), ``<stem>_overlay.png`` and ``<stem>_classes.json``.

    bg_threshold: if set, pixels whose best class score is below it get label 0 "background" and
    the classes are numbered from 1. Returns {"labels", "overlay", "classes"} paths.
    """
    import json

    from leafseg.data.io import palette, read_image, write_image, write_mask
    from leafseg.eval.report import overlay

    model, _ = load_sseg(checkpoint, device)
    seg = SSegSegmenter(model)
    seg.prepare(list(classes), SimpleNamespace(templates=templates))
    image = read_image(image_path)
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None].to(device)
    scores = F.interpolate(seg(x), size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    best, labels = scores.max(0)
    names = list(classes)
    if bg_threshold is not None:
        labels = torch.where(best < bg_threshold, torch.zeros_like(labels), labels + 1)
        names = ["background", *names]
    labels = labels.cpu().numpy().astype(np.uint8)
    out, stem = Path(out_dir), Path(image_path).stem
    paths = {"labels": out / f"{stem}_labels.png", "overlay": out / f"{stem}_overlay.png",
             "classes": out / f"{stem}_classes.json"}
    colours = palette(len(names))
    write_mask(paths["labels"], labels, colours)
    write_image(paths["overlay"], overlay(image, labels, colours))
    paths["classes"].write_text(json.dumps(names, indent=1) + "\n")
    return paths
