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

The config lives in :mod:`leafseg.recipes.sseg_config`, the model, inference and model state in
:mod:`leafseg.recipes.sseg_model`; their public names are re-exported here.

Distributed: launch with ``torchrun --nproc_per_node N``; ``batch_size`` is per process and the
contrastive negatives are gathered from every process.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from leafseg.data.imagetext import build_image_text, cache_regions, collate_image_text
from leafseg.eval.prompts import get_templates
from leafseg.losses.contrastive import contrastive_loss, multi_label_loss
from leafseg.losses.matching import MaskMatchingLoss
from leafseg.recipes.sseg_config import SSegConfig, check_config
from leafseg.recipes.sseg_model import (
    SSegModel,
    SSegSegmenter,
    build_criterion,
    build_model,
    eval_protocol,
    evaluate_sseg,
    load_model_state,
    load_sseg,
    model_state,
    no_timer,
    segment,
)
from leafseg.text.nouns import build_noun_vocabulary, noun_batch
from leafseg.training import (
    MetricsLog,
    config_dict,
    distributed_session,
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

__all__ = ["SSegConfig", "SSegModel", "SSegSegmenter", "build_criterion", "build_model", "build_pseudo_mask_generator",
           "check_config", "eval_protocol", "evaluate_sseg", "image_text_source", "learning_rate", "load_model_state",
           "load_sseg", "model_state", "run", "segment", "train", "train_step"]


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
            raise ValueError(f"{cfg.data}: no nouns found in the captions; set noun_prompts=0")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(vocab) + "\n")
    if info.distributed:
        dist.barrier()
    return set(path.read_text().split())


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
    ``text_lr_scale`` (each group's ``lr_scale``)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = cfg.text_lr_scale if name.startswith("text.") else 1.0
        decay = cfg.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "weight_decay": decay, "lr_scale": scale} for (scale, decay), ps in groups.items()]


def learning_rate(cfg: SSegConfig, it: int) -> float:
    """Linear warm-up for ``warmup`` iterations, then cosine decay to ``lr * min_lr_ratio``."""
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    frac = min(1.0, (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup))
    return float(cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))))


# ------------------------------------------------------------------------------- checkpoint
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
def ensure_synthetic_world(cfg: SSegConfig) -> None:
    """With ``cfg.synthetic`` ({train, val, size, seed}) set, write that world to ``cfg.data`` unless it is there."""
    if not cfg.synthetic or (Path(cfg.data) / "classes.json").exists():
        return
    from leafseg.data.synthetic import SyntheticWorld

    syn = dict(cfg.synthetic)
    world = SyntheticWorld(seed=syn.get("seed", 0), size=syn.get("size", 64))
    for split in ("train", "val"):
        if syn.get(split):
            world.write(cfg.data, int(syn[split]), split)


def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (fresh), True (continue from ``out_dir/checkpoints/last.pt`` if it exists), or a
    checkpoint path. Returns the run's figures (iterations, final losses, eval mIoU, out_dir, ...).
    """
    cfg = load_config(SSegConfig, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume)


def prepare_run(cfg: SSegConfig, info, resume) -> SimpleNamespace:
    """Seeds, tokenizer, pseudo-mask generator (and cache), model, optimiser, logs, loop state."""
    out = Path(cfg.out_dir)
    amp = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and info.device.type == "cuda") else None
    seed_everything(cfg.seed + info.rank)
    set_reproducible(cfg.deterministic if isinstance(cfg.deterministic, bool) else info.device.type == "cpu")
    if info.is_main:
        ensure_synthetic_world(cfg)
    if info.distributed:
        dist.barrier()
    tokenizer = build_tokenizer_for(cfg, out, info)
    nouns = build_nouns_for(cfg, out, info)
    generator = build_pseudo_mask_generator(cfg, info.device)
    regions_dir = cache_pseudo_masks(cfg, generator, out / "pseudo_masks", info) if cfg.pm_cache else None
    model = build_model(cfg, tokenizer, info.device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    r = SimpleNamespace(out=out, amp=amp, tokenizer=tokenizer, nouns=nouns, generator=generator,
                        regions_dir=regions_dir, model=model, optimizer=optimizer,
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
            group["lr"] = learning_rate(cfg, s["iteration"]) * group.get("lr_scale", 1.0)
        loss, parts = train_step(r.student, batch, generator=r.generator, criterion=criterion, cfg=cfg,
                                 device=info.device, amp_dtype=r.amp, nouns_vocab=r.nouns)
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
