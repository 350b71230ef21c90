"""S-Seg (Huang et al., "Exploring Simple Open-Vocabulary Semantic Segmentation"): MaskFormer from
pseudo-masks and language, with no mask labels and no CLIP.

Reads top to bottom like the paper: config -> image-text data -> pseudo-masks (a frozen encoder +
per-image k-means, on the fly or cached) -> model (MaskFormer without class head, a text
transformer from scratch, 2-layer MLP projections, a learned temperature) -> one training step
(Hungarian matching to the pseudo-masks, L_mask = dice + 20 focal on matched pairs only; symmetric
contrastive loss between the mean of the mask features and the caption) -> loop -> checkpoint ->
evaluation (class names x templates -> per-mask class probabilities -> sum over queries of class
probability x mask probability; background by a threshold).

    from leafseg.recipes.sseg import run
    result = run("configs/sseg/synthetic.yaml", ["out_dir=runs/sseg"])
    leafseg.eval.segment.segment("photo.jpg", "runs/sseg/final.pt", "out/", classes=["cat", "dog", "grass"])

The config lives in :mod:`leafseg.recipes.sseg_config`, the model, inference and model state in
:mod:`leafseg.recipes.sseg_model`; their public names are re-exported here.

Distributed: launch with ``torchrun --nproc_per_node N``; ``batch_size`` is per process and the
contrastive negatives are gathered from every process.
"""

from __future__ import annotations

from pathlib import Path

import torch

from leafseg.data.imagetext import build_image_text, cache_regions, epoch_batches
from leafseg.errors import ConfigError
from leafseg.eval.prompts import get_templates
from leafseg.losses.contrastive import contrastive_loss, multi_label_loss
from leafseg.losses.matching import MaskMatchingLoss
from leafseg.recipes.sseg_config import PseudoMaskSettings, SSegConfig, check_config
from leafseg.recipes.sseg_model import (
    SSegModel,
    SSegSegmenter,
    build_criterion,
    build_model,
    evaluate_sseg,
    load_model_state,
    load_segmenter,
    load_sseg,
    model_state,
    no_timer,
)
from leafseg.text.nouns import build_noun_vocabulary, noun_batch
from leafseg.training import (
    Run,
    barrier,
    config_dict,
    distributed_session,
    export_weights,
    load_config,
    seed_everything,
    state_digest,
    warmup_cosine_schedule,
    wrap_ddp,
)

RECIPE = "sseg"
CONFIG = SSegConfig

__all__ = ["CONFIG", "PseudoMaskSettings", "SSegConfig", "SSegModel", "SSegSegmenter", "build_criterion",
           "build_model", "build_pseudo_mask_generator", "check_config", "evaluate_sseg", "image_text_source",
           "load_model_state", "load_segmenter", "load_sseg", "model_state", "param_groups", "run", "train",
           "train_step"]


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
    barrier()
    return build_tokenizer("bpe", path=path, context_length=cfg.context_length)


def build_nouns_for(cfg: SSegConfig, out: Path, info) -> set[str] | None:
    """With ``noun_prompts``: the noun vocabulary of the training captions (built by the main rank,
    saved to ``out/nouns.txt``, one per line, most frequent first; read by the others and on resume)."""
    if not cfg.noun_prompts:
        return None
    path = out / "nouns.txt"
    if info.is_main and not path.is_file():
        captions = image_text_source(cfg, shuffle=False, rank=0, world_size=1).captions(cfg.tokenizer_captions)
        vocab = build_noun_vocabulary(captions, size=cfg.noun_vocab_size)
        if not vocab:
            raise ConfigError(f"{cfg.data}: no nouns found in the captions; set noun_prompts=0")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(vocab) + "\n")
    barrier()
    return set(path.read_text().split())


def build_pseudo_mask_generator(cfg: SSegConfig, device):
    """The frozen encoder + k-means of section 3.4 (``cfg.pseudo_masks``), on ``device``."""
    from leafseg.backbones import build_backbone
    from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor

    pm = cfg.pseudo_masks
    if pm.arch_overrides:
        encoder = build_backbone(pm.backbone, weights=pm.weights, device=str(device), arch_overrides=pm.arch_overrides)
    else:
        encoder = build_feature_extractor(pm.backbone, weights=pm.weights, device=str(device))
    size = (pm.size, pm.size) if pm.size else None
    return PseudoMaskGenerator(encoder.eval().requires_grad_(False), k=pm.k, layer=pm.layer, kind=pm.kind,
                               seed=cfg.seed, feature_size=size)


def cache_pseudo_masks(cfg: SSegConfig, generator, folder: Path, info) -> Path:
    """Region maps of every training pair's centred view, one PNG per key (each rank its share)."""
    if not (folder / "complete").exists():
        source = image_text_source(cfg, shuffle=False, rank=info.rank, world_size=info.world_size)
        cache_regions(source, generator, folder, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                      device=info.device)
        barrier()
        if info.is_main:
            (folder / "complete").write_text("done\n")
    return folder


# ------------------------------------------------------------------------------- train step
def train_step(model, batch: dict, *, generator, criterion: MaskMatchingLoss, cfg: SSegConfig, device,
               amp_dtype=None, timer=None, nouns_vocab: set[str] | None = None) -> tuple[torch.Tensor, dict]:
    """One iteration's loss. batch: image (B, 3, S, S), caption (B str), optionally regions (B, S, S).
    Returns (L = lambda_mask L_mask + lambda_contrastive L_contrastive [+ lambda_noun L_noun], detached
    parts). With ``cfg.noun_prompts`` and a noun vocabulary, GroupViT's multi-label loss joins in."""
    timer = timer or no_timer
    images = batch["image"].to(device, non_blocking=True)
    with timer("pseudo_masks"):
        regions = batch["regions"].to(device) if "regions" in batch else generator(images)
    if cfg.flip:
        flip = torch.rand(images.shape[0], device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        regions = torch.where(flip[:, None, None], regions.flip(-1), regions)
    nouns, targets = None, None
    if cfg.noun_prompts and nouns_vocab:
        nouns, targets = noun_batch(batch["caption"], nouns_vocab, cfg.noun_prompts, get_templates(cfg.noun_templates))
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    with autocast:
        out = model(images, batch["caption"], timer=timer, nouns=nouns)
    aux = [a["masks"] for a in out["aux"]] if cfg.deep_supervision else None
    mask = criterion(out["masks"].float(), regions, aux, timer=timer)
    with timer("losses"):
        con = contrastive_loss(out["image_embedding"], out["text_embedding"], out["logit_scale"])
    loss = cfg.lambda_mask * mask["loss"] + cfg.lambda_contrastive * con
    parts = {"loss_mask": mask["loss"].detach(), "dice": mask["dice"], "focal": mask["focal"],
             "loss_contrastive": con.detach(), "scale": out["logit_scale"].detach()}
    if nouns is not None:
        with timer("losses"):
            noun = multi_label_loss(out["image_embedding"], out["noun_embedding"], targets.to(device),
                                    out["logit_scale"])
        loss = loss + cfg.lambda_noun * noun
        parts["loss_noun"] = noun.detach()
    return loss, parts


def param_groups(model: torch.nn.Module, cfg: SSegConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only; the text encoder's learning rate scaled by
    ``text_lr_scale`` (each group's ``lr``; the schedule keeps the ratio)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = cfg.text_lr_scale if name.startswith("text.") else 1.0
        decay = cfg.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "weight_decay": decay, "lr": cfg.lr * scale} for (scale, decay), ps in groups.items()]


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (fresh), True (continue from ``out_dir/checkpoints/last.pt``), or a checkpoint path;
    overwrite: replace an earlier run in ``out_dir``. Returns the run's figures (iterations, final
    losses, eval mIoU, out_dir, ...).
    """
    cfg = load_config(SSegConfig, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume, overwrite)


def batches(cfg: SSegConfig, run: Run, regions_dir):
    """Endless (epoch, batch number, skipped, batch) stream, resuming at the state's epoch after
    ``batches_done`` batches."""
    return epoch_batches(image_text_source(cfg, regions_dir=regions_dir), batch_size=cfg.batch_size,
                         num_workers=cfg.num_workers, epoch=run.state.epoch, skip=run.state.batches_done,
                         pin_memory=run.info.device.type == "cuda")


def train(cfg: SSegConfig, info, resume: bool | str = False, overwrite: bool = False) -> dict:
    """The loop: batches of pairs, one optimiser step each, logs, checkpoints, evaluations."""
    seed_everything(cfg.seed + info.rank)
    run = Run(RECIPE, cfg, info, resume=resume, overwrite=overwrite,
              extra_outputs=("pseudo_masks", "tokenizer.json", "nouns.txt", "final.pt"))
    if info.is_main and cfg.synthetic is not None:
        cfg.synthetic.ensure(cfg.data)
    barrier()
    tokenizer = build_tokenizer_for(cfg, run.out, info)
    nouns = build_nouns_for(cfg, run.out, info)
    generator = build_pseudo_mask_generator(cfg, info.device)
    regions_dir = cache_pseudo_masks(cfg, generator, run.out / "pseudo_masks", info) if cfg.pseudo_masks.cache \
        else None
    model = build_model(cfg, tokenizer, info.device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    scheduler = warmup_cosine_schedule(optimizer, cfg.iterations, cfg.warmup, cfg.min_lr_ratio)
    s = run.restore(optimizer=optimizer, scheduler=scheduler, load_model=lambda state: load_model_state(model, state))
    s.extra.setdefault("skipped", 0)
    run.start(cfg.iterations)
    if cfg.eval.dataset:
        run.save_protocol(cfg.eval.resolve(cfg.eval.dataset))
    student, criterion = wrap_ddp(model, info), build_criterion(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"tokenizer": tokenizer.state() if tokenizer is not None else None}
    for epoch, done, skipped, batch in batches(cfg, run, regions_dir):
        if s.iteration >= cfg.iterations:
            break
        loss, parts = train_step(student, batch, generator=generator, criterion=criterion, cfg=cfg,
                                 device=info.device, amp_dtype=run.precision.dtype, nouns_vocab=nouns)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        s.iteration, s.epoch, s.batches_done, s.extra["skipped"] = s.iteration + 1, epoch, done, skipped
        run.step_done({"loss": loss.detach(), **parts}, {"lr": lr}, cfg.batch_size, cfg.iterations)
        if cfg.eval.every and cfg.eval.dataset and s.iteration % cfg.eval.every == 0:
            log_eval(run, model, cfg)
        if s.iteration % cfg.save_every == 0 and s.iteration < cfg.iterations:
            run.save(model=model_state(model, cfg), optimizer=optimizer, scheduler=scheduler, extra=extra)
        if run.stop_requested():
            return run.stopped()
    return finish(run, model, cfg, extra)


def log_eval(run: Run, model: SSegModel, cfg: SSegConfig) -> dict:
    """Evaluate through the harness by class name; one row of metrics.csv."""
    report = evaluate_sseg(model, cfg, run.info.device, out_dir=run.out / "eval" if run.info.is_main else None)
    row = {"iteration": run.state.iteration, "miou": report.miou, "acc": report.acc,
           "iou": report.metrics.get("iou") or list(report.metrics["per_class_iou"].values())}
    run.log_eval(row)
    return row


def finish(run: Run, model: SSegModel, cfg: SSegConfig, extra: dict) -> dict:
    """Exported weights (``final.pt``: recipe name, config, tokenizer), last evaluation, ``results.json``."""
    if run.info.is_main:
        export_weights(run.out / "final.pt", model_state(model, cfg), recipe=RECIPE, config=config_dict(cfg),
                       extra=extra)
    last_eval = log_eval(run, model, cfg) if cfg.eval.dataset else {}
    train_log = run.train_rows()
    result = {"iterations": run.state.iteration, "skipped": run.state.extra["skipped"], "out_dir": str(run.out),
              "checkpoint": str(run.out / "final.pt"), "miou": last_eval.get("miou"),
              "final_train": train_log[-1] if train_log else {}, "weights_sha256": state_digest(model),
              "train_log": train_log}
    return run.finish(result)
