"""CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"), trained
from scratch: contrastive image-text pretraining of a ViT image tower and a causal text transformer.

Reads top to bottom like the paper: config -> image-text pairs -> a byte-level BPE trained on the
captions -> model (a Hugging Face ``CLIPModel`` of the config's sizes, random init) -> one training step
(random resized crop + flip; both towers project into one space; the symmetric InfoNCE loss over the
batch, negatives gathered from every process, with the learnt logit scale, initialised at ln(1/0.07) and
clamped at ln(100)) -> loop (AdamW, warm-up then cosine) -> checkpoint -> evaluation (recall at 1 of
held-out image-text pairs; MaskCLIP over the trained CLIP through the harness) -> the trained CLIP
exported as a Hugging Face folder.

    from leafseg.recipes.clip_pretrain import run
    result = run("configs/clip/synthetic.yaml", ["out_dir=runs/clip"])
    build_backbone("clip_vitb16", weights="runs/clip/clip")       # the trained CLIP, any dense CLIP method
    leafseg segment scene.png --weights runs/clip/clip/model.safetensors --classes "sky,grass,ball"

The config lives in :mod:`leafseg.recipes.clip_pretrain_config`, the model, export and segmenter in
:mod:`leafseg.recipes.clip_pretrain_model`. Distributed: launch with ``torchrun --nproc_per_node N``;
``batch_size`` is per process.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from leafseg.data.augment import RandomResizedCropFlip
from leafseg.data.imagetext import build_image_text, collate_image_text, epoch_batches
from leafseg.errors import ConfigError
from leafseg.eval.retrieval import recall_at_1
from leafseg.recipes.clip_pretrain_config import ClipConfig, check_config
from leafseg.recipes.clip_pretrain_model import (
    RECIPE,
    ContrastivePair,
    build_model,
    clamp_logit_scale,
    clip_loss,
    export_clip,
    load_segmenter,
    maskclip,
    param_groups,
    rebuild,
)
from leafseg.text.tokenizer import BPETokenizer
from leafseg.training import (
    Run,
    all_gather_objects,
    barrier,
    config_dict,
    distributed_session,
    load_config,
    seed_everything,
    state_digest,
    warmup_cosine_schedule,
    wrap_ddp,
)

CONFIG = ClipConfig

__all__ = ["CONFIG", "ClipConfig", "build_tokenizer_for", "check_config", "evaluate_clip", "load_segmenter",
           "pair_source", "rebuild", "retrieval", "run", "train", "train_step"]


# ------------------------------------------------------------------------------------- data
def pair_source(cfg: ClipConfig, path: str, split: str | None, limit: int | None = None, *, train: bool,
                rank: int | None = None, world_size: int | None = None):
    """Image-text pairs of ``path`` in ``data.layout`` as square views of the model's input size: shuffled
    with random positions for training (``train``), in order and centred otherwise."""
    kw = dict(image_size=cfg.vision.image_size, shuffle_buffer=cfg.data.shuffle_buffer if train else 0,
              seed=cfg.seed, random_crop=cfg.data.random_crop and train, rank=rank, world_size=world_size)
    if cfg.data.layout == "folder":
        kw.update(split=split, n=limit)
    return build_image_text(cfg.data.layout, path, **kw)


def build_tokenizer_for(cfg: ClipConfig, out: Path, info) -> BPETokenizer:
    """The byte-level BPE of ``text.tokenizer``, or one trained by the main rank on the first training
    captions and saved to ``out/tokenizer.json`` (read by the others, and again on resume)."""
    path = Path(cfg.text.tokenizer) if cfg.text.tokenizer else out / "tokenizer.json"
    if cfg.text.tokenizer and not path.is_file():
        raise ConfigError(f"text.tokenizer: {path} not found")
    if info.is_main and not path.is_file():
        source = pair_source(cfg, cfg.data.path, cfg.data.split, cfg.data.limit, train=False, rank=0, world_size=1)
        BPETokenizer.train(source.captions(cfg.text.tokenizer_captions), cfg.text.vocab_size,
                           cfg.text.min_frequency, cfg.text.context_length, specials_last=True).save(path)
    barrier()
    tokenizer = BPETokenizer.load(path, cfg.text.context_length)
    if tokenizer.end_id == 2:
        raise ConfigError(f"text.tokenizer: {path} numbers its end-of-text token 2, which CLIP's text model "
                          "reads as its legacy pooling rule; use a tokenizer trained by this recipe")
    return tokenizer


# ------------------------------------------------------------------------------- train step
def train_step(model: torch.nn.Module, batch: dict, *, augment: RandomResizedCropFlip, device,
               precision) -> tuple[torch.Tensor, dict]:
    """One iteration's loss. batch: image (B, 3, S, S) in [0, 1], caption (B str). Returns (CLIP's loss,
    detached parts for the log)."""
    images = augment(batch["image"].to(device, non_blocking=True))
    with precision.autocast():
        out = model(images, batch["caption"])
    loss = clip_loss(out["image_embedding"], out["text_embedding"], out["logit_scale"])
    return loss, {"logit_scale": out["logit_scale"].detach()}


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (fresh), True (continue from ``out_dir/checkpoints/last.pt``) or a checkpoint path;
    overwrite: replace an earlier run in ``out_dir``. Returns the run's figures (iterations, mIoU, recall
    at 1, out_dir, the exported folder, ...).
    """
    cfg = load_config(ClipConfig, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume, overwrite)


def train(cfg: ClipConfig, info, resume: bool | str = False, overwrite: bool = False) -> dict:
    """The loop: batches of pairs, one optimiser step each, logs, checkpoints, evaluations."""
    seed_everything(cfg.seed + info.rank)
    run = Run(RECIPE, cfg, info, resume=resume, overwrite=overwrite, extra_outputs=("tokenizer.json", "clip"))
    if info.is_main and cfg.data.synthetic is not None:
        cfg.data.synthetic.ensure(cfg.data.path)
    barrier()
    tokenizer = build_tokenizer_for(cfg, run.out, info)
    encoder = build_model(cfg, tokenizer, info.device)
    augment = RandomResizedCropFlip(cfg.vision.image_size, tuple(cfg.augment.scale), tuple(cfg.augment.ratio),
                                    cfg.augment.flip)
    optimizer = torch.optim.AdamW(param_groups(encoder, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                  eps=cfg.eps)
    scheduler = warmup_cosine_schedule(optimizer, cfg.iterations, cfg.warmup, cfg.min_lr_ratio)
    s = run.restore(optimizer=optimizer, scheduler=scheduler, load_model=encoder.model.load_state_dict)
    s.extra.setdefault("skipped", 0)
    run.start(cfg.iterations)
    if cfg.eval.dataset:
        run.save_protocol(cfg.eval.resolve(cfg.eval.dataset))
    model = wrap_ddp(ContrastivePair(encoder), info)
    source = pair_source(cfg, cfg.data.path, cfg.data.split, cfg.data.limit, train=True)
    stream = epoch_batches(source, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers, epoch=s.epoch,
                           skip=s.batches_done, pin_memory=info.device.type == "cuda")
    extra = {"tokenizer": tokenizer.to_str()}
    while s.iteration < cfg.iterations:
        epoch, done, skipped, batch = next(stream)
        loss, parts = train_step(model, batch, augment=augment, device=info.device, precision=run.precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
        optimizer.step()
        clamp_logit_scale(encoder, cfg.max_logit_scale)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        s.iteration, s.epoch, s.batches_done, s.extra["skipped"] = s.iteration + 1, epoch, done, skipped
        run.step_done({"loss": loss.detach(), **parts}, {"lr": lr}, cfg.batch_size, cfg.iterations)
        if cfg.eval.every and s.iteration % cfg.eval.every == 0 and s.iteration < cfg.iterations:
            log_eval(run, encoder, cfg)
        if s.iteration % cfg.save_every == 0 or s.iteration == cfg.iterations:
            run.save(model=encoder.model.state_dict(), optimizer=optimizer, scheduler=scheduler, extra=extra)
        if run.stop_requested():
            return run.stopped()
    return finish(run, encoder, tokenizer, cfg)


# ------------------------------------------------------------------------------- evaluation
def evaluate_clip(encoder, cfg: ClipConfig, device, out_dir=None, dataset=None, protocol=None):
    """MaskCLIP over ``encoder`` through the harness on ``cfg.eval``'s dataset (or ``dataset``) under
    ``cfg.eval``'s protocol (or ``protocol``), by the dataset's class names. Returns the EvalReport."""
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import evaluate

    dataset = dataset or build_dataset(cfg.eval.dataset, cfg.eval.root, split=cfg.eval.split)
    protocol = protocol or cfg.eval.resolve(getattr(dataset, "name", None) or cfg.eval.dataset)
    was_training = encoder.training
    report = evaluate(maskclip(encoder, cfg), dataset, protocol, out_dir, progress=False, device=device,
                      method_name="maskclip", config=config_dict(cfg))
    encoder.train(was_training)
    return report


@torch.no_grad()
def retrieval(encoder, cfg: ClipConfig, device) -> dict:
    """Recall at 1 on the first ``retrieval.limit`` held-out pairs (each process embeds its share; every
    process gets the same figures). Returns {"image_to_text", "text_to_image", "pairs"}."""
    r = cfg.retrieval
    source = pair_source(cfg, r.path or cfg.data.path, r.split, r.limit, train=False)
    share = math.ceil(r.limit / max(source.world_size, 1))
    loader = DataLoader(source, batch_size=r.batch_size, collate_fn=collate_image_text, generator=torch.Generator())
    was_training, parts = encoder.training, []
    encoder.eval()
    for batch in loader:
        parts.append((encoder.image_embedding(batch["image"].to(device)).float().cpu(),
                      encoder.encode_text(batch["caption"]).float().cpu(), batch["caption"]))
        if sum(len(p[2]) for p in parts) >= share:
            break
    encoder.train(was_training)
    mine = [torch.cat([p[i] for p in parts])[:share] if parts else torch.zeros(0, encoder.proj_dim) for i in (0, 1)]
    captions = [c for p in parts for c in p[2]][:share]
    gathered = all_gather_objects((mine[0], mine[1], captions))
    return recall_at_1(torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered]),
                       [c for g in gathered for c in g[2]])


def log_eval(run: Run, encoder, cfg: ClipConfig) -> dict:
    """One evaluation: recall at 1 (``retrieval.limit`` > 0) and MaskCLIP's mIoU (``eval.dataset``); one row
    of metrics.csv."""
    row = {"iteration": run.state.iteration}
    if cfg.retrieval.limit:
        r = retrieval(encoder, cfg, run.info.device)
        row.update(r1_image_to_text=r["image_to_text"], r1_text_to_image=r["text_to_image"], pairs=r["pairs"])
    if cfg.eval.dataset:
        report = evaluate_clip(encoder, cfg, run.info.device, out_dir=run.out / "eval" if run.info.is_main else None)
        row.update(miou=report.miou, acc=report.acc, iou=list(report.metrics["per_class_iou"].values()))
    if len(row) > 1:
        run.log_eval(row)
    return row


def finish(run: Run, encoder, tokenizer: BPETokenizer, cfg: ClipConfig) -> dict:
    """The exported folder (``out_dir/clip``), the last evaluation, ``results.json``."""
    folder = run.out / "clip"
    if run.info.is_main:
        export_clip(encoder, tokenizer, folder, cfg)
    barrier()
    last = log_eval(run, encoder, cfg)
    train_log = run.train_rows()
    result = {"iterations": run.state.iteration, "skipped": run.state.extra["skipped"], "out_dir": str(run.out),
              "clip": str(folder), "checkpoint": str(folder / "model.safetensors"), "miou": last.get("miou"),
              "r1_image_to_text": last.get("r1_image_to_text"), "r1_text_to_image": last.get("r1_text_to_image"),
              "final_train": train_log[-1] if train_log else {}, "weights_sha256": state_digest(encoder.model),
              "train_log": train_log}
    return run.finish(result)
