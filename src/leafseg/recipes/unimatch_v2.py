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
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from leafseg.data.augment import StrongAugment, cutmix_boxes, cutmix_partners, mix
from leafseg.data.transforms import RandomScaleCropFlip, SeededCrops
from leafseg.errors import ConfigError
from leafseg.eval.settings import EvalSettings
from leafseg.heads import build_dpt_segmenter
from leafseg.losses import build_loss, complementary_dropout_masks, confident_pixel_loss, pseudo_labels
from leafseg.training import (
    ModelEMA,
    ResumableSampler,
    Run,
    RunSettings,
    barrier,
    config_dict,
    distributed_session,
    export_weights,
    load_config,
    poly_schedule,
    seed_everything,
    state_digest,
    wrap_ddp,
)
from leafseg.training.runinfo import write_json
from leafseg.training.settings import SyntheticSpec

RECIPE = "unimatch_v2"
METHODS = ("unimatch_v2", "fixmatch", "supervised")


# ----------------------------------------------------------------------------------- config
@dataclass
class UniMatchV2Config(RunSettings):
    """Every setting of a run; defaults are the authors' Pascal ViT-S values (see docs/unimatch_v2.md)."""

    method: Literal["unimatch_v2", "fixmatch", "supervised"] = "unimatch_v2"
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
    synthetic: SyntheticSpec | None = None  # dataset "synthetic": the world to write to data_root on first use
    on_error: Literal["stop", "skip"] = "stop"
    crop_size: int = 518
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    num_workers: int = 4
    # model
    backbone: str = "dinov2_vits14"
    weights: str | None = None             # None: Hugging Face cache; "random"; a folder or .pth
    arch_overrides: dict = field(default_factory=dict)
    layers: list[int] | None = None        # tapped blocks; None: published per size
    head_features: int | None = None
    head_out_channels: list[int] | None = None
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # optimisation
    batch_size: int = 4                    # per process, labelled and unlabelled each
    epochs: int = 60
    iters_per_epoch: int = 0               # 0: unlabelled images // (batch_size * processes)
    lr: float = 5e-6                       # encoder; the head gets lr * lr_head_multiplier
    lr_head_multiplier: float = 40.0
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    poly_power: float = 0.9
    ema_momentum: float = 0.996
    conf_thresh: float = 0.95
    loss: Literal["ce", "ohem"] = "ce"     # ohem: Cityscapes
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 200_000
    cutmix_p: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # strong views' Gaussian blur (px)
    # evaluation: the harness, at every epoch end, on the validation split
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(preset="unimatch"))
    # system (RunSettings) with this recipe's defaults
    out_dir: str = "runs/unimatch_v2"
    save_every: int = 500                  # iterations between checkpoints (and at every epoch end)

    RENAMED = {"eval_mode": "eval.protocol.mode", "eval_crop": "eval.protocol.crop",
               "eval_stride": "eval.protocol.stride", "eval_batch_size": "eval.protocol.batch_size"}


def check_config(cfg: UniMatchV2Config) -> None:
    """Refuse settings that cannot work, before any work is done (types and choices are checked on load)."""
    from leafseg.backbones.build import check_arch_overrides

    check_arch_overrides(cfg.backbone, cfg.arch_overrides)
    if not (cfg.labeled_split or cfg.num_labeled or cfg.labeled_fraction):
        raise ConfigError("give labeled_split/unlabeled_split files, or num_labeled / labeled_fraction")
    if bool(cfg.labeled_split) != bool(cfg.unlabeled_split):
        raise ConfigError("labeled_split and unlabeled_split go together")
    if len(cfg.blur_sigma) != 2 or not 0 < cfg.blur_sigma[0] <= cfg.blur_sigma[1]:
        raise ConfigError(f"blur_sigma must be [low, high] with 0 < low <= high, got {cfg.blur_sigma}")
    if cfg.dataset == "synthetic" and cfg.synthetic is None and not Path(cfg.data_root, "classes.json").exists():
        raise ConfigError(f"data_root={cfg.data_root} holds no synthetic world; set synthetic={{train: N, val: M}} "
                          "to write one there, or point data_root at a folder written by `leafseg synth`")
    if cfg.batch_size < 1 or cfg.epochs < 1:
        raise ConfigError(f"batch_size and epochs must be at least 1, got {cfg.batch_size} and {cfg.epochs}")


CONFIG = UniMatchV2Config


# ------------------------------------------------------------------------------------- data
def write_random_splits(dataset: str, root: str | Path, out_dir: str | Path, *, num_labeled: int = 0,
                        fraction: float = 0.0, seed: int = 0, split: str = "train", **options) -> tuple[Path, Path]:
    """Draw a labelled subset of ``dataset``'s ``split``; write labeled.txt / unlabeled.txt
    (the rest) under ``out_dir`` in the UniMatch format. Returns both paths."""
    from leafseg.data.datasets import build_dataset, write_split_file

    train = build_dataset(dataset, root, split=split, **options)
    k = num_labeled or max(1, round(fraction * len(train)))
    if not 0 < k < len(train):
        raise ConfigError(f"{k} labelled images out of {len(train)} leaves no unlabelled set")
    order = np.random.default_rng(seed).permutation(len(train))
    out = Path(out_dir)
    lab = write_split_file([train.samples[i] for i in sorted(order[:k])], out / "labeled.txt", root=train.root)
    unl = write_split_file([train.samples[i] for i in sorted(order[k:])], out / "unlabeled.txt", root=train.root)
    return lab, unl


@dataclass
class Data:
    """The datasets of a run and the epoch length."""

    labeled: object
    unlabeled: object
    val: object
    iters_per_epoch: int

    @property
    def num_classes(self) -> int:
        return self.labeled.num_classes

    @property
    def ignore_index(self) -> int:
        return self.labeled.ignore_index


def build_data(cfg: UniMatchV2Config, info, out: Path) -> Data:
    """Labelled, unlabelled and validation datasets (split files written by the main rank)."""
    from leafseg.data.datasets import build_dataset

    if cfg.dataset == "synthetic" and cfg.synthetic is not None and info.is_main:
        cfg.synthetic.ensure(cfg.data_root)
    lab_file, unl_file = cfg.labeled_split, cfg.unlabeled_split
    if not lab_file:
        lab_file, unl_file = out / "splits" / "labeled.txt", out / "splits" / "unlabeled.txt"
        if info.is_main:
            write_random_splits(cfg.dataset, cfg.data_root, out / "splits", num_labeled=cfg.num_labeled,
                                fraction=cfg.labeled_fraction, seed=cfg.split_seed, **cfg.dataset_options)
    barrier()
    kw = dict(on_error=cfg.on_error, **cfg.dataset_options)
    labeled = build_dataset(cfg.dataset, cfg.data_root, split_file=lab_file, **kw)
    unlabeled = build_dataset(cfg.dataset, cfg.data_root, split_file=unl_file, **kw)
    if cfg.val_split.endswith(".txt"):
        val = build_dataset(cfg.dataset, cfg.data_root, split_file=cfg.val_split, **kw)
    else:
        val = build_dataset(cfg.dataset, cfg.data_root, split=cfg.val_split, **kw)
    ipe = cfg.iters_per_epoch or len(unlabeled) // (cfg.batch_size * info.world_size)
    if ipe < 1:
        raise ConfigError(f"{len(unlabeled)} unlabelled images give no full batch of batch_size={cfg.batch_size}")
    return Data(labeled, unlabeled, val, ipe)


def make_loader(view: SeededCrops, batch: int, epoch_draws: int, cfg, info, epoch: int, start_batch: int):
    """A loader over one epoch of ``view``, starting after ``start_batch`` batches."""
    sampler = ResumableSampler(len(view), epoch_draws, num_replicas=info.world_size, rank=info.rank,
                               seed=cfg.seed * 1000 + view.stream)
    sampler.set_epoch(epoch)
    sampler.set_start(start_batch * batch)
    return DataLoader(view, batch_size=batch, sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
                      pin_memory=info.device.type == "cuda", generator=torch.Generator())


# ------------------------------------------------------------------------------------ model
def build_segmenter(cfg: UniMatchV2Config, num_classes: int, device, weights: str | None = None):
    """DINOv2 + DPT for ``num_classes`` (``weights`` replaces the config's backbone weights)."""
    return build_dpt_segmenter(
        cfg.backbone, num_classes, weights=weights or cfg.weights, device=str(device),
        arch_overrides=cfg.arch_overrides or None, layers=cfg.layers, features=cfg.head_features,
        out_channels=cfg.head_out_channels, attn_implementation=cfg.attn_implementation)


def build_model(cfg: UniMatchV2Config, num_classes: int, device):
    """Student (DINOv2 + DPT), AdamW with encoder / head learning rates."""
    model = build_segmenter(cfg, num_classes, device)
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
def segmenter(model, classes):
    """The model as a harness method over its own ``classes``: images in [0, 1] -> logits (the DINOv2
    encoder normalises)."""
    from leafseg.eval.methods import ModelSegmenter

    method = ModelSegmenter(model, num_classes=len(classes))
    method.class_names = list(classes)
    return method


def evaluate(model, val, cfg: UniMatchV2Config, device) -> dict:
    """Harness evaluation of ``model`` on the whole validation set under ``cfg.eval``'s protocol (each
    process scores every world_size-th image; the counts are summed). Returns mIoU, acc, per-class IoU
    and the pixel count."""
    from leafseg.eval.harness import evaluate as harness_evaluate

    was_training = model.training
    protocol = cfg.eval.resolve(getattr(val, "name", None) or cfg.dataset)
    report = harness_evaluate(segmenter(model, val.classes), val, protocol, progress=False, device=device,
                              method_name=RECIPE)
    model.train(was_training)
    return {"miou": report.miou, "acc": report.acc, "iou": list(report.metrics["per_class_iou"].values()),
            "pixels": report.metrics["pixels"]}


def load_segmenter(exported: dict, device: str):
    """Exported weights (:func:`leafseg.training.read_exported`) as a harness method."""
    cfg = load_config(UniMatchV2Config, None, exported["config"])
    classes = exported["extra"]["classes"]
    model = build_segmenter(cfg, len(classes), device, weights="random")
    model.load_state_dict(exported["model"])
    return segmenter(model.eval(), classes)


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (a fresh run), True (continue from ``out_dir/checkpoints/last.pt``), or the path of a
    checkpoint; overwrite: replace an earlier run in ``out_dir``. Returns the run's figures:
    best_ema_miou, final_ema_miou, final_student_miou, iterations, out_dir, history (evaluations),
    train_log.
    """
    cfg = load_config(UniMatchV2Config, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume, overwrite)


def train(cfg: UniMatchV2Config, info, resume: bool | str = False, overwrite: bool = False) -> dict:
    """The training loop: epochs of zipped labelled / unlabelled batches, evaluation at each epoch end,
    checkpoints every ``save_every`` iterations and at epoch ends."""
    run = Run(RECIPE, cfg, info, resume=resume, overwrite=overwrite)
    data = build_data(cfg, info, run.out)
    seed_everything(cfg.seed)  # the same initial weights on every rank (student and teacher)
    model, optimizer = build_model(cfg, data.num_classes, info.device)
    ema = ModelEMA(model, cfg.ema_momentum)
    seed_everything(cfg.seed + info.rank)  # each rank its own augmentation
    total, ipe = cfg.epochs * data.iters_per_epoch, data.iters_per_epoch
    scheduler = poly_schedule(optimizer, total, cfg.poly_power)
    s = run.restore(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
    s.best = s.best or {"ema_miou": -1.0, "epoch": -1}
    run.start(total)
    run.save_protocol(cfg.eval.resolve(getattr(data.val, "name", None) or cfg.dataset))
    student = wrap_ddp(model, info)
    criterion = build_loss(cfg.loss, **({"thresh": cfg.ohem_thresh, "min_kept": cfg.ohem_min_kept}
                                        if cfg.loss == "ohem" else {}), ignore_index=data.ignore_index)
    strong = StrongAugment(blur_sigma=tuple(cfg.blur_sigma))
    transform = RandomScaleCropFlip(cfg.crop_size, tuple(cfg.scale_range))
    batch_l = cfg.batch_size * (2 if cfg.method == "supervised" else 1)
    views = (SeededCrops(data.labeled, transform, cfg.seed, 0, True),
             SeededCrops(data.unlabeled, transform, cfg.seed, 1, False))
    while s.iteration < total:
        epoch, start = divmod(s.iteration, ipe)
        loaders = [make_loader(views[0], batch_l, ipe * batch_l * info.world_size, cfg, info, epoch, start)]
        if cfg.method != "supervised":
            loaders.append(make_loader(views[1], cfg.batch_size, ipe * cfg.batch_size * info.world_size, cfg, info,
                                       epoch, start))
        for batches in zip(*loaders, strict=True):
            loss, parts = train_step(student, ema.module, batches[0], batches[1] if len(batches) > 1 else None,
                                     cfg=cfg, criterion=criterion, strong=strong, amp_dtype=run.precision.dtype,
                                     device=info.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update(model, s.iteration)
            scheduler.step()
            s.iteration += 1
            s.epoch, s.batches_done = divmod(s.iteration, ipe)
            run.step_done({"loss": loss.detach(), **parts}, {"lr_encoder": optimizer.param_groups[0]["lr"],
                                                              "lr_head": optimizer.param_groups[1]["lr"]},
                          batch_l + (cfg.batch_size if cfg.method != "supervised" else 0), total)
            if s.iteration % ipe == 0:
                end_of_epoch(run, model, ema, data, cfg)
            if s.iteration % cfg.save_every == 0 or s.iteration % ipe == 0:
                run.save(model=model.state_dict(), optimizer=optimizer, scheduler=scheduler, ema=ema.state_dict())
            if run.stop_requested():
                return run.stopped()
    return finish(run, model, ema, data, cfg)


def _export(run: Run, name: str, tensors: dict, data: Data, **extra) -> None:
    if run.info.is_main:
        export_weights(run.out / name, tensors, recipe=RECIPE, config=config_dict(run.cfg),
                       extra={"classes": list(data.val.classes), **extra})


def end_of_epoch(run: Run, model, ema, data: Data, cfg: UniMatchV2Config) -> None:
    """Evaluate student and EMA teacher through the harness, log, keep the best teacher's weights."""
    s = run.state
    student = evaluate(model, data.val, cfg, run.info.device)
    teacher = evaluate(ema.module, data.val, cfg, run.info.device)
    improved = teacher["miou"] > s.best["ema_miou"]
    if improved:
        s.best = {"ema_miou": teacher["miou"], "epoch": s.epoch - 1}
    run.log_eval({"iteration": s.iteration, "epoch": s.epoch - 1, "student_miou": student["miou"],
                  "ema_miou": teacher["miou"], "best_ema_miou": s.best["ema_miou"], "student_acc": student["acc"],
                  "ema_acc": teacher["acc"], "pixels": teacher["pixels"], "ema_iou": teacher["iou"]})
    if improved:
        _export(run, "best_ema.safetensors", ema.state_dict(), data, miou=teacher["miou"], epoch=s.best["epoch"],
                iteration=s.iteration)


def finish(run: Run, model, ema, data: Data, cfg: UniMatchV2Config) -> dict:
    """Final weights (exported with the recipe name and config) and results.json; returns the figures."""
    s = run.state
    last = s.history[-1] if s.history else {}
    result = {"method": cfg.method, "complementary_dropout": cfg.complementary_dropout,
              "iterations": s.iteration, "best_ema_miou": s.best["ema_miou"], "best_epoch": s.best["epoch"],
              "final_ema_miou": last.get("ema_miou"), "final_student_miou": last.get("student_miou"),
              "final_pixels": last.get("pixels"), "out_dir": str(run.out), "history": s.history,
              "weights_sha256": state_digest(model), "train_log": run.train_rows()}
    _export(run, "final_student.safetensors", model.state_dict(), data)
    _export(run, "final_ema.safetensors", ema.state_dict(), data)
    return run.finish(result)


# ------------------------------------------------------------------------------------- demo
DEMO_SETTINGS = [  # configs/unimatch_v2/synthetic.yaml with 64 validation scenes (a test keeps them in step)
    "dataset=synthetic", "synthetic={train: 1024, val: 64, size: 64, seed: 0}", "labeled_fraction=0.0625",
    "backbone=dinov2_vits14", "weights=random", "layers=[0, 1, 2, 3]", "crop_size=48", "batch_size=4",
    "arch_overrides={hidden_size: 96, num_hidden_layers: 4, num_attention_heads: 2, patch_size: 8, image_size: 48}",
    "head_features=16", "head_out_channels=[8, 16, 32, 64]", "lr=0.001", "lr_head_multiplier=2.0",
    "conf_thresh=0.7", "blur_sigma=[0.1, 0.5]", "num_workers=0", "save_every=100000",
    "eval.protocol={batch_size: 32, workers: 0, size_multiple: 8, window_merge: probabilities}",
]


DEMO_METHODS = (("labelled-only", "supervised"), ("UniMatch V2", "unimatch_v2"))


def demo(out_dir: str | Path = "demo_out/unimatch_v2", *, epochs: int = 7, seed: int = 0, device: str = "cpu",
         progress: bool = True, overrides: list[str] | None = None, jobs: int = 1) -> dict:
    """A short run on the synthetic world (1/16 labelled, tiny random-init model; an epoch is 240
    iterations): labelled-only vs UniMatch V2 for the same iterations, each run on one CPU thread so
    its figures do not depend on the machine's cores. ``jobs`` = 2 trains both at once in two processes
    (same figures; progress bars then give way to one line per evaluation). ``overrides`` (key=value)
    go after the demo's settings. Returns {"rows": [{method, best/final EMA mIoU (%), iterations,
    seconds, out_dir}], "out_dir"}; writes demo.json."""
    out = Path(out_dir)
    settings = DEMO_SETTINGS + [f"data_root={out / 'world'}", f"epochs={epochs}", f"seed={seed}",
                                f"device={device}", "threads=1", f"progress={progress and jobs == 1}"]
    settings += list(overrides or [])
    cfg = load_config(UniMatchV2Config, None, settings)
    check_config(cfg)
    cfg.synthetic.ensure(cfg.data_root)  # once, before the runs that share it start
    runs = [settings + [f"method={method}", f"out_dir={out / method}"] for _, method in DEMO_METHODS]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(runs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_demo_run, runs))
    else:
        results = [_demo_run(r) for r in runs]
    rows = [{"method": label, **result} for (label, _), result in zip(DEMO_METHODS, results, strict=True)]
    write_json(out / "demo.json", {"rows": rows, "settings": settings, "epochs": epochs, "seed": seed})
    return {"rows": rows, "out_dir": str(out)}


def _demo_run(settings: list[str]) -> dict:
    """One run of the demo (in this process or a worker): its figures in %."""
    start = time.perf_counter()
    result = run(None, settings, overwrite=True)
    return {"best EMA mIoU": 100 * result["best_ema_miou"], "final EMA mIoU": 100 * (result["final_ema_miou"] or 0.0),
            "iterations": result["iterations"], "seconds": time.perf_counter() - start, "out_dir": result["out_dir"]}
