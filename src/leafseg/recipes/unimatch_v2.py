"""UniMatch V2 (Yang, Zhao, Zhao): semi-supervised semantic segmentation on DINOv2 + DPT.

Reads top to bottom like the method: config -> data -> model -> one training step -> loop ->
checkpoint -> evaluation. ``method`` picks the paper's method or its two baselines from the
same code:

* ``unimatch_v2``: an EMA teacher labels the weak view; two strong views (colour jitter,
  grayscale, blur, CutMix) go through the student in one pass, with Complementary Dropout on
  the encoder's channels (``complementary_dropout: false`` turns it off); loss =
  (labelled CE + mean of the two confident-pixel losses) / 2.
* ``fixmatch``: the same with one strong view and no dropout.
* ``supervised``: labelled images only, batch doubled.

    from leafseg.recipes.unimatch_v2 import run
    result = run("configs/unimatch_v2/pascal_732.yaml", ["out_dir=runs/pascal_732"], resume=False)

Distributed: launch with ``torchrun --nproc_per_node N``; ``batch_size`` is per process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from leafseg.data.augment import StrongAugment, cutmix_boxes, cutmix_partners, mix
from leafseg.data.transforms import RandomScaleCropFlip, SeededCrops
from leafseg.eval import ConfusionMatrix, SlidingWindowPredictor
from leafseg.heads import build_dpt_segmenter
from leafseg.losses import build_loss, complementary_dropout_masks, confident_pixel_loss, pseudo_labels
from leafseg.training import (
    MetricsLog,
    ModelEMA,
    PolyLR,
    ResumableSampler,
    all_reduce_mean,
    config_dict,
    distributed_session,
    load_config,
    progress,
    restore_training_state,
    save_checkpoint,
    save_config,
    save_weights,
    seed_everything,
    set_reproducible,
    shard_indices,
    state_digest,
    training_state,
)
from leafseg.training.runinfo import run_record, write_json

METHODS = ("unimatch_v2", "fixmatch", "supervised")


# ----------------------------------------------------------------------------------- config
@dataclass
class UniMatchV2Config:
    """Every setting of a run; defaults are the authors' Pascal ViT-S values (see docs/unimatch_v2.md)."""

    method: str = "unimatch_v2"            # unimatch_v2 | fixmatch | supervised
    complementary_dropout: bool = True
    # data: a leafseg dataset name + root; UniMatch split files, or a random split of "train"
    dataset: str = "voc"
    data_root: str = "data/VOCdevkit"
    dataset_options: dict = field(default_factory=dict)
    labeled_split: str | None = None       # "image_relpath mask_relpath" lines
    unlabeled_split: str | None = None
    val_split: str = "val"                 # a split name, or a split file (.txt)
    num_labeled: int = 0                   # without split files: labelled images drawn from "train"
    labeled_fraction: float = 0.0          # ... or this fraction of them
    split_seed: int = 0
    synthetic: dict = field(default_factory=dict)  # dataset "synthetic": {train, val, size, seed} to write
    on_error: str = "stop"
    crop_size: int = 518
    scale_range: list = field(default_factory=lambda: [0.5, 2.0])
    num_workers: int = 4
    # model
    backbone: str = "dinov2_vits14"
    weights: str | None = None             # None: Hugging Face cache; "random"; a folder or .pth
    arch_overrides: dict = field(default_factory=dict)
    layers: list | None = None             # tapped blocks; None: published per size
    head_features: int | None = None
    head_out_channels: list | None = None
    attn_implementation: str = "sdpa"      # sdpa | eager
    # optimisation
    batch_size: int = 4                    # per process, labelled and unlabelled each
    epochs: int = 60
    iters_per_epoch: int = 0               # 0: unlabelled images // (batch_size * processes)
    lr: float = 5e-6                       # encoder; the head gets lr * lr_head_multiplier
    lr_head_multiplier: float = 40.0
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    poly_power: float = 0.9
    ema_momentum: float = 0.996
    conf_thresh: float = 0.95
    loss: str = "ce"                       # ce | ohem (Cityscapes)
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 200_000
    cutmix_p: float = 0.5
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0])  # strong views' Gaussian blur (px)
    # evaluation
    eval_mode: str = "whole"               # whole (resized to a multiple of the patch) | slide
    eval_crop: int = 798
    eval_stride: int = 532
    eval_batch_size: int = 1
    # system
    device: str = "auto"
    amp: str = "auto"                      # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | off
    deterministic: bool | str = "auto"     # auto: on for CPU
    seed: int = 0
    out_dir: str = "runs/unimatch_v2"
    save_every: int = 500                  # iterations between checkpoints (and at every epoch end)
    stop_after: int = 0                    # stop abruptly after this iteration, as if killed (tests)
    log_every: int = 20
    progress: bool = True
    tensorboard: bool = False


def check_config(cfg: UniMatchV2Config) -> None:
    """Refuse settings that cannot work, before any work is done."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.eval_mode not in ("whole", "slide") or cfg.amp not in ("auto", "bf16", "off"):
        raise ValueError("eval_mode must be whole|slide and amp auto|bf16|off")
    if not (cfg.labeled_split or cfg.num_labeled or cfg.labeled_fraction):
        raise ValueError("give labeled_split/unlabeled_split files, or num_labeled / labeled_fraction")
    if bool(cfg.labeled_split) != bool(cfg.unlabeled_split):
        raise ValueError("labeled_split and unlabeled_split go together")
    if len(cfg.blur_sigma) != 2 or not 0 < cfg.blur_sigma[0] <= cfg.blur_sigma[1]:
        raise ValueError(f"blur_sigma must be [low, high] with 0 < low <= high, got {cfg.blur_sigma}")


# ------------------------------------------------------------------------------------- data
def write_random_splits(dataset: str, root: str | Path, out_dir: str | Path, *, num_labeled: int = 0,
                        fraction: float = 0.0, seed: int = 0, split: str = "train", **options) -> tuple[Path, Path]:
    """Draw a labelled subset of ``dataset``'s ``split``; write labeled.txt / unlabeled.txt
    (the rest) under ``out_dir`` in the UniMatch format. Returns both paths."""
    from leafseg.data.datasets import build_dataset, write_split_file

    train = build_dataset(dataset, root, split=split, **options)
    k = num_labeled or max(1, round(fraction * len(train)))
    if not 0 < k < len(train):
        raise ValueError(f"{k} labelled images out of {len(train)} leaves no unlabelled set")
    order = np.random.default_rng(seed).permutation(len(train))
    out = Path(out_dir)
    lab = write_split_file([train.samples[i] for i in sorted(order[:k])], out / "labeled.txt", root=train.root)
    unl = write_split_file([train.samples[i] for i in sorted(order[k:])], out / "unlabeled.txt", root=train.root)
    return lab, unl


def ensure_synthetic_world(root: str | Path, train: int, val: int, size: int = 64, seed: int = 0) -> Path:
    """Write a synthetic world (``train`` + ``val`` scenes) to ``root`` unless it is there."""
    from leafseg.data.synthetic import SyntheticWorld
    from leafseg.data.synthetic_dataset import load_synthetic

    root = Path(root)
    if (root / "classes.json").exists():
        layout = load_synthetic(root)
        if len(layout.split("train")) >= train and len(layout.split("val")) >= val:
            return root
    world = SyntheticWorld(seed=seed, size=size)
    world.write(root, train, "train")
    return world.write(root, val, "val")


def build_data(cfg: UniMatchV2Config, info, out: Path) -> SimpleNamespace:
    """Labelled, unlabelled and validation datasets (split files written by the main rank)."""
    from leafseg.data.datasets import build_dataset

    if cfg.dataset == "synthetic" and cfg.synthetic and info.is_main:
        ensure_synthetic_world(cfg.data_root, **cfg.synthetic)
    lab_file, unl_file = cfg.labeled_split, cfg.unlabeled_split
    if not lab_file:
        lab_file, unl_file = out / "splits" / "labeled.txt", out / "splits" / "unlabeled.txt"
        if info.is_main:
            write_random_splits(cfg.dataset, cfg.data_root, out / "splits", num_labeled=cfg.num_labeled,
                                fraction=cfg.labeled_fraction, seed=cfg.split_seed, **cfg.dataset_options)
    if info.distributed:
        dist.barrier()
    kw = dict(on_error=cfg.on_error, **cfg.dataset_options)
    labeled = build_dataset(cfg.dataset, cfg.data_root, split_file=lab_file, **kw)
    unlabeled = build_dataset(cfg.dataset, cfg.data_root, split_file=unl_file, **kw)
    if cfg.val_split.endswith(".txt"):
        val = build_dataset(cfg.dataset, cfg.data_root, split_file=cfg.val_split, **kw)
    else:
        val = build_dataset(cfg.dataset, cfg.data_root, split=cfg.val_split, **kw)
    ipe = cfg.iters_per_epoch or len(unlabeled) // (cfg.batch_size * info.world_size)
    if ipe < 1:
        raise ValueError(f"{len(unlabeled)} unlabelled images give no full batch of {cfg.batch_size}")
    return SimpleNamespace(labeled=labeled, unlabeled=unlabeled, val=val, iters_per_epoch=ipe,
                           num_classes=labeled.num_classes, ignore_index=labeled.ignore_index)


def make_loader(view: SeededCrops, batch: int, epoch_draws: int, cfg, info, epoch: int, start_batch: int):
    """A loader over one epoch of ``view``, starting after ``start_batch`` batches."""
    sampler = ResumableSampler(len(view), epoch_draws, num_replicas=info.world_size, rank=info.rank,
                               seed=cfg.seed * 1000 + view.stream)
    sampler.set_epoch(epoch)
    sampler.set_start(start_batch * batch)
    return DataLoader(view, batch_size=batch, sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
                      pin_memory=info.device.type == "cuda", generator=torch.Generator())


# ------------------------------------------------------------------------------------ model
def build_model(cfg: UniMatchV2Config, num_classes: int, device):
    """Student (DINOv2 + DPT), AdamW with encoder / head learning rates."""
    model = build_dpt_segmenter(
        cfg.backbone, num_classes, weights=cfg.weights, device=str(device), arch_overrides=cfg.arch_overrides or None,
        layers=cfg.layers, features=cfg.head_features, out_channels=cfg.head_out_channels,
        attn_implementation=cfg.attn_implementation)
    groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
              {"params": list(model.head.parameters()), "lr": cfg.lr * cfg.lr_head_multiplier}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return model, optimizer


# ------------------------------------------------------------------------------- train step
def train_step(student, teacher, batch_l: dict, batch_u: dict | None, *, cfg: UniMatchV2Config, criterion,
               strong: StrongAugment, amp_dtype, device) -> tuple[torch.Tensor, dict]:
    """One iteration's loss. batch_l: image (B, 3, S, S), mask (B, S, S); batch_u: image,
    ignore. Returns (loss, detached parts: loss_x, loss_u, confident fraction)."""
    img_x, mask_x = batch_l["image"].to(device, non_blocking=True), batch_l["mask"].to(device, non_blocking=True)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    if cfg.method == "supervised":
        with autocast:
            loss_x = criterion(student(img_x), mask_x)
        return loss_x, {"loss_x": loss_x.detach()}
    img_w, ignore = batch_u["image"].to(device, non_blocking=True), batch_u["ignore"].to(device, non_blocking=True)
    with torch.no_grad(), autocast:
        labels, conf = pseudo_labels(teacher(img_w))
    b, (h, w) = img_w.shape[0], img_w.shape[-2:]
    views, targets = [], []
    for _ in range(2 if cfg.method == "unimatch_v2" else 1):
        boxes = cutmix_boxes(b, h, w, p=cfg.cutmix_p, device=device)
        partners = cutmix_partners(b, device=device)
        views.append(mix(strong(img_w), boxes, partners))
        targets.append([mix(t, boxes, partners) for t in (labels, conf, ignore)])
    scale = None
    if cfg.method == "unimatch_v2" and cfg.complementary_dropout:
        drop = complementary_dropout_masks(b, student_channels(student), device=device)
        scale = torch.cat((torch.ones(img_x.shape[0], drop.shape[1], device=device), drop))
    with autocast:
        logits = student(torch.cat([img_x, *views]), channel_scale=scale)
    pred_x, *pred_u = logits.split([img_x.shape[0]] + [b] * len(views))
    loss_x = criterion(pred_x, mask_x)
    loss_u = sum(confident_pixel_loss(p, *t, threshold=cfg.conf_thresh)
                 for p, t in zip(pred_u, targets, strict=True)) / len(views)
    confident = ((conf >= cfg.conf_thresh) & (ignore != 255)).float().mean()
    return (loss_x + loss_u) / 2, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "confident": confident}


def student_channels(student) -> int:
    return getattr(student, "module", student).encoder.embed_dim


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, val, cfg: UniMatchV2Config, info, num_classes: int, ignore_index: int, amp_dtype) -> dict:
    """mIoU of ``model`` over the whole validation set: each rank predicts its shard (every
    image exactly once), confusion matrices are summed over ranks. Whole-image mode resizes to a
    multiple of the patch size; slide mode sums softmax over ``eval_crop`` windows."""
    was_training = model.training
    model.eval()
    patch = model.encoder.patch_size

    def probabilities(x):
        with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return model(x).float().softmax(1)

    whole = cfg.eval_mode == "whole"
    predictor = SlidingWindowPredictor(probabilities, num_classes, mode=cfg.eval_mode, crop=cfg.eval_crop,
                                       stride=cfg.eval_stride, size_multiple=patch if whole else None)
    cm = ConfusionMatrix(num_classes, ignore_index, device=info.device)
    shard = Subset(val, shard_indices(len(val), info.rank, info.world_size))
    loader = DataLoader(shard, batch_size=cfg.eval_batch_size, num_workers=min(cfg.num_workers, 2),
                        generator=torch.Generator())  # its own generator: evaluation leaves the RNG streams alone
    for batch in loader:
        keep = [not s for s in batch["skipped"]] if "skipped" in batch else [True] * len(batch["image"])
        if any(keep):
            keep_t = torch.tensor(keep)
            pred = predictor(batch["image"][keep_t].to(info.device)).argmax(1)
            cm.update(pred, batch["mask"][keep_t].to(info.device))
    cm.all_reduce()
    model.train(was_training)
    return cm.compute()


# ------------------------------------------------------------------------------------- loop
def resolve_precision(cfg: UniMatchV2Config, device: torch.device):
    """(autocast dtype or None, deterministic flag) for the device."""
    amp = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda") else None
    det = cfg.deterministic if isinstance(cfg.deterministic, bool) else device.type == "cpu"
    return amp, det


def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (a fresh run), True (continue from ``out_dir/checkpoints/last.pt`` if it
    exists), or the path of a checkpoint. Returns the run's figures: best_ema_miou,
    final_ema_miou, final_student_miou, iterations, out_dir, history (evaluations), train_log.
    """
    cfg = load_config(UniMatchV2Config, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume)


def prepare_run(cfg: UniMatchV2Config, info, resume) -> SimpleNamespace:
    """Seeds, data, model, optimiser, schedule, logs, and the loop state (fresh or resumed)."""
    out = Path(cfg.out_dir)
    amp, det = resolve_precision(cfg, info.device)
    set_reproducible(det)
    data = build_data(cfg, info, out)
    seed_everything(cfg.seed)  # the same initial weights on every rank (student and teacher)
    model, optimizer = build_model(cfg, data.num_classes, info.device)
    ema = ModelEMA(model, cfg.ema_momentum)
    seed_everything(cfg.seed + info.rank)  # each rank its own augmentation
    total = cfg.epochs * data.iters_per_epoch
    scheduler = PolyLR(optimizer, total, cfg.poly_power)
    state = {"iteration": 0, "epoch": 0, "batches_done": 0, "best_ema_miou": -1.0, "best_epoch": -1, "history": []}
    ckpt = Path(resume) if isinstance(resume, str) else out / "checkpoints" / "last.pt"
    if resume and ckpt.exists():
        state = restore_training_state(ckpt, model=model, ema=ema, optimizer=optimizer, scheduler=scheduler,
                                       rank=info.rank, world_size=info.world_size, map_location=info.device)
    elif isinstance(resume, str):
        raise FileNotFoundError(f"checkpoint to resume not found: {ckpt}")
    logs = SimpleNamespace(train=MetricsLog(out, "train_log", cfg.tensorboard), eval=MetricsLog(out, "metrics"))
    if info.is_main:
        for log in (logs.train, logs.eval):
            log.truncate_after(state["iteration"])
        save_config(cfg, out / "config.yaml")
        record = run_record(seed=cfg.seed, config=config_dict(cfg), device=info.device)
        record.update(world_size=info.world_size, resumed_from=str(ckpt) if state["iteration"] else None)
        write_json(out / "run.json", record)
    student = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        student = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return SimpleNamespace(out=out, amp=amp, data=data, model=model, student=student, ema=ema, optimizer=optimizer,
                           scheduler=scheduler, total=total, state=state, logs=logs)


def train(cfg: UniMatchV2Config, info, resume: bool | str = False) -> dict:
    """The training loop: epochs of zipped labelled / unlabelled batches, evaluation at each
    epoch end, checkpoints every ``save_every`` iterations and at epoch ends."""
    r = prepare_run(cfg, info, resume)
    criterion = build_loss(cfg.loss, **({"thresh": cfg.ohem_thresh, "min_kept": cfg.ohem_min_kept}
                                        if cfg.loss == "ohem" else {}), ignore_index=r.data.ignore_index)
    strong, s, ipe = StrongAugment(blur_sigma=tuple(cfg.blur_sigma)), r.state, r.data.iters_per_epoch
    transform = RandomScaleCropFlip(cfg.crop_size, tuple(cfg.scale_range))
    batch_l = cfg.batch_size * (2 if cfg.method == "supervised" else 1)
    views = (SeededCrops(r.data.labeled, transform, cfg.seed, 0, True),
             SeededCrops(r.data.unlabeled, transform, cfg.seed, 1, False))
    bar = progress(r.total, s["iteration"], info.is_main and cfg.progress, f"{cfg.method}")
    running, t0 = [], time.perf_counter()
    while s["iteration"] < r.total:
        epoch, start = divmod(s["iteration"], ipe)
        loader_l = make_loader(views[0], batch_l, ipe * batch_l * info.world_size, cfg, info, epoch, start)
        loaders = [loader_l]
        if cfg.method != "supervised":
            loaders.append(make_loader(views[1], cfg.batch_size, ipe * cfg.batch_size * info.world_size, cfg, info,
                                       epoch, start))
        for batches in zip(*loaders, strict=True):
            loss, parts = train_step(r.student, r.ema.module, batches[0], batches[1] if len(batches) > 1 else None,
                                     cfg=cfg, criterion=criterion, strong=strong, amp_dtype=r.amp, device=info.device)
            r.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            r.optimizer.step()
            r.ema.update(r.model, s["iteration"])
            r.scheduler.step()
            s["iteration"] += 1
            s["epoch"], s["batches_done"] = divmod(s["iteration"], ipe)
            running.append({"loss": loss.detach(), **parts})
            bar.update(1)
            if s["iteration"] % cfg.log_every == 0 or s["iteration"] == r.total:
                log_train(r, running, time.perf_counter() - t0, info)
                running, t0 = [], time.perf_counter()
            if s["iteration"] % ipe == 0:
                end_of_epoch(r, cfg, info)
            if s["iteration"] % cfg.save_every == 0 or s["iteration"] % ipe == 0:
                ckpt = training_state(model=r.model, ema=r.ema, optimizer=r.optimizer, scheduler=r.scheduler,
                                      loop=s, config=config_dict(cfg))
                if info.is_main:
                    save_checkpoint(ckpt, r.out / "checkpoints" / "last.pt")
            if cfg.stop_after and s["iteration"] >= cfg.stop_after:
                bar.close()
                return {"stopped_at": s["iteration"], "out_dir": str(r.out)}
    bar.close()
    return finish(r, cfg, info)


def log_train(r, running: list[dict], seconds: float, info) -> None:
    """Average the last iterations' losses over them and over ranks; log one row."""
    keys = list(running[0])
    means = all_reduce_mean(torch.stack([torch.stack([row[k].float() for row in running]).mean() for k in keys]))
    row = {"iteration": r.state["iteration"], **dict(zip(keys, means.tolist(), strict=True)),
           "lr_encoder": r.optimizer.param_groups[0]["lr"], "lr_head": r.optimizer.param_groups[1]["lr"],
           "seconds_per_iter": seconds / len(running)}
    if info.is_main:
        r.logs.train.log(row, step=r.state["iteration"])


def end_of_epoch(r, cfg: UniMatchV2Config, info) -> None:
    """Evaluate student and EMA teacher, log, keep the best teacher's weights."""
    s, d = r.state, r.data
    student = evaluate(r.model, d.val, cfg, info, d.num_classes, d.ignore_index, r.amp)
    teacher = evaluate(r.ema.module, d.val, cfg, info, d.num_classes, d.ignore_index, r.amp)
    improved = teacher["miou"] > s["best_ema_miou"]
    if improved:
        s["best_ema_miou"], s["best_epoch"] = teacher["miou"], s["epoch"] - 1
    row = {"iteration": s["iteration"], "epoch": s["epoch"] - 1, "student_miou": student["miou"],
           "ema_miou": teacher["miou"], "best_ema_miou": s["best_ema_miou"], "student_acc": student["acc"],
           "ema_acc": teacher["acc"], "pixels": teacher["pixels"], "ema_iou": teacher["iou"]}
    s["history"].append(row)
    if info.is_main:
        r.logs.eval.log(row, step=s["iteration"])
        if improved:
            save_weights(r.ema.state_dict(), r.out / "best_ema.safetensors",
                         {"miou": teacher["miou"], "epoch": s["best_epoch"], "iteration": s["iteration"]})


def finish(r, cfg: UniMatchV2Config, info) -> dict:
    """Final weights and results (``results.json``); returns the figures."""
    history = r.state["history"]
    last = history[-1] if history else {}
    result = {"method": cfg.method, "complementary_dropout": cfg.complementary_dropout,
              "iterations": r.state["iteration"], "best_ema_miou": r.state["best_ema_miou"],
              "best_epoch": r.state["best_epoch"], "final_ema_miou": last.get("ema_miou"),
              "final_student_miou": last.get("student_miou"), "final_pixels": last.get("pixels"),
              "out_dir": str(r.out), "history": history, "weights_sha256": state_digest(r.model),
              "train_log": r.logs.train.rows() if info.is_main else []}
    if info.is_main:
        save_weights(r.model.state_dict(), r.out / "final_student.safetensors")
        save_weights(r.ema.state_dict(), r.out / "final_ema.safetensors")
        write_json(r.out / "results.json", {k: v for k, v in result.items() if k != "train_log"})
    r.logs.train.close()
    return result


# ------------------------------------------------------------------------------------- demo
DEMO_SETTINGS = [  # configs/unimatch_v2/synthetic.yaml with 64 validation scenes (a test keeps them in step)
    "dataset=synthetic", "synthetic={train: 1024, val: 64, size: 64, seed: 0}", "labeled_fraction=0.0625",
    "backbone=dinov2_vits14", "weights=random", "layers=[0, 1, 2, 3]", "crop_size=48", "batch_size=4",
    "arch_overrides={hidden_size: 96, num_hidden_layers: 4, num_attention_heads: 2, patch_size: 8, image_size: 48}",
    "head_features=16", "head_out_channels=[8, 16, 32, 64]", "lr=0.001", "lr_head_multiplier=2.0",
    "conf_thresh=0.7", "blur_sigma=[0.1, 0.5]", "num_workers=0", "eval_batch_size=32", "save_every=100000",
]


def demo(out_dir: str | Path = "demo_out/unimatch_v2", *, epochs: int = 10, seed: int = 0, device: str = "cpu",
         progress: bool = True, overrides: list[str] | None = None) -> dict:
    """A short run on the synthetic world (1/16 labelled, tiny random-init model; an epoch is 240
    iterations): labelled-only vs UniMatch V2 for the same iterations. ``overrides`` (key=value)
    go after the demo's settings. Returns {"rows": [{method, best/final EMA mIoU (%), iterations,
    seconds}], "out_dir"}; writes demo.json."""
    out = Path(out_dir)
    settings = DEMO_SETTINGS + [f"data_root={out / 'world'}", f"epochs={epochs}", f"seed={seed}",
                                f"device={device}", f"progress={progress}"] + list(overrides or [])
    rows = []
    for label, method in (("labeled-only", "supervised"), ("UniMatch V2", "unimatch_v2")):
        start = time.perf_counter()
        result = run(None, settings + [f"method={method}", f"out_dir={out / method}"])
        rows.append({"method": label, "best EMA mIoU": 100 * result["best_ema_miou"],
                     "final EMA mIoU": 100 * (result["final_ema_miou"] or 0.0),
                     "iterations": result["iterations"], "seconds": time.perf_counter() - start})
    write_json(out / "demo.json", {"rows": rows, "settings": settings, "epochs": epochs, "seed": seed})
    return {"rows": rows, "out_dir": str(out)}
