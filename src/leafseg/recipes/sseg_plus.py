"""S-Seg+ (S-Seg section 3.7): self-training on the target dataset with a trained S-Seg.

Reads top to bottom: config -> pseudo-label the target's unlabelled training images with the
trained S-Seg and the target's class names (background by threshold when the dataset has one;
low-confidence pixels optionally ignored) -> train a fresh segmentation model (a ViT + DPT head,
standing in for the paper's MAE ViT + UperNet) on those labels with cross-entropy -> evaluate it
and the S-Seg teacher with the same harness.

    from leafseg.recipes.sseg_plus import run
    result = run("configs/sseg/synthetic_plus.yaml", ["sseg_checkpoint=runs/sseg/final.pt"])
    result["miou"], result["sseg_miou"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from leafseg.config import config_dict, load_config
from leafseg.data.io import list_images, palette, read_image, read_mask, write_mask
from leafseg.data.transforms import RandomScaleCropFlip
from leafseg.eval.background import apply_background, prompt_classes
from leafseg.eval.methods import ModelSegmenter
from leafseg.eval.protocol import Protocol
from leafseg.eval.settings import EvalSettings
from leafseg.heads import build_dpt_segmenter
from leafseg.losses import cross_entropy
from leafseg.recipes.sseg import SSegSegmenter, evaluate_sseg, load_sseg
from leafseg.training.checkpoint import export_weights, state_digest
from leafseg.training.distributed import ResumableSampler, barrier, distributed_session
from leafseg.training.run import Run, wrap_ddp
from leafseg.training.schedule import poly_schedule
from leafseg.training.seeding import seed_everything
from leafseg.training.settings import RunSettings

RECIPE = "sseg_plus"


@dataclass
class SSegPlusConfig(RunSettings):
    """Every setting of a self-training run."""

    sseg_checkpoint: str = "runs/sseg/final.pt"
    # target dataset: unlabelled training images (their masks are never read) and class names
    target_images: str = "data/synthetic64/images/train"
    target_limit: int | None = None
    classes: list[str] | None = None         # prompt entries (synonyms allowed); null: the eval dataset's
    templates: str = "single"
    background: Literal["none", "threshold"] = "none"  # threshold: class 0 = background below bg_threshold
    bg_threshold: float = 0.0
    min_confidence: float = 0.0              # pixels whose best score is below: ignored (255)
    label_size: int | None = None            # pseudo-label at this square size (batched); null: own size
    # second-stage model: a registry ViT + DPT head
    backbone: str = "dino_vits8"
    weights: str | None = "random"
    arch_overrides: dict = field(default_factory=dict)
    layers: list[int] | None = None
    head_features: int | None = None
    head_out_channels: list[int] | None = None
    stem_channels: int = 0                   # >0: a convolutional stem adds local features (leafseg.heads.stem)
    student_init: Literal["none", "sseg"] = "none"  # sseg: start from the teacher's trained ViT (same architecture)
    # training
    crop_size: int = 448
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    batch_size: int = 8                      # per process
    iterations: int = 4000
    lr: float = 1e-4                         # encoder; the head gets lr * lr_head_multiplier
    lr_head_multiplier: float = 10.0
    weight_decay: float = 0.01
    poly_power: float = 0.9
    num_workers: int = 2
    # evaluation: the harness on eval.dataset (also scores the S-Seg teacher, for the self-training gain)
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(dataset="synthetic", root="data/synthetic64"))
    eval_teacher: bool = True
    # system (RunSettings) with this recipe's defaults
    out_dir: str = "runs/sseg_plus"

    RENAMED = {"eval_dataset": "eval.dataset", "eval_root": "eval.root", "eval_split": "eval.split",
               "eval_batch_size": "eval.protocol.batch_size"}


def check_config(cfg: SSegPlusConfig) -> None:
    """Refuse settings that cannot work, before any work is done (types and choices are checked on load)."""
    from leafseg.backbones.build import check_arch_overrides

    check_arch_overrides(cfg.backbone, cfg.arch_overrides)
    from leafseg.errors import ConfigError

    if not cfg.eval.dataset:
        raise ConfigError("eval.dataset is needed: it names the classes and scores the model")
    if cfg.batch_size < 1 or cfg.iterations < 1:
        raise ConfigError(f"batch_size and iterations must be at least 1, got {cfg.batch_size} and {cfg.iterations}")


CONFIG = SSegPlusConfig


# ---------------------------------------------------------------------------- pseudo-labels
@torch.no_grad()
def pseudo_label(cfg: SSegPlusConfig, classes: list, has_background: bool, device, rank: int = 0,
                 world_size: int = 1) -> Path:
    """Label every target image with the trained S-Seg (each process every world_size-th one); writes
    ``out_dir/pseudo_labels/<stem>.png`` (palette PNGs of class ids, 255 = ignored). Existing labels are
    kept (resuming)."""
    folder = Path(cfg.out_dir) / "pseudo_labels"
    paths = list_images(cfg.target_images)[: cfg.target_limit]
    todo = [p for p in paths if not (folder / f"{p.stem}.png").exists()][rank::world_size]
    if not todo:
        return folder
    model, _ = load_sseg(cfg.sseg_checkpoint, str(device))
    seg = SSegSegmenter(model)
    seg.prepare(prompt_classes(classes, has_background, cfg.background), Protocol(templates=cfg.templates))
    colours = palette(len(classes))
    step = 16 if cfg.label_size else 1
    for i in range(0, len(todo), step):
        group = todo[i : i + step]
        images = [torch.from_numpy(read_image(p)).permute(2, 0, 1).float().div(255) for p in group]
        sizes = [im.shape[-2:] for im in images]
        if cfg.label_size:
            images = [F.interpolate(im[None], size=(cfg.label_size,) * 2, mode="bilinear", align_corners=False)[0]
                      for im in images]
        scores = seg(torch.stack(images).to(device))
        for path, score, size in zip(group, scores, sizes, strict=True):
            score = F.interpolate(score[None], size=tuple(size), mode="bilinear", align_corners=False)
            labels = apply_background(score, cfg.background, cfg.bg_threshold)[0]
            labels[score[0].max(0).values < cfg.min_confidence] = 255
            write_mask(folder / f"{path.stem}.png", labels.cpu().numpy().astype(np.uint8), colours)
    return folder


class PseudoLabelled(Dataset):
    """(image, pseudo-label) training crops keyed by ``ResumableSampler`` keys (index, epoch, draw);
    the crop depends only on (seed, epoch, draw)."""

    def __init__(self, images: list[Path], labels: Path, transform: RandomScaleCropFlip, seed: int):
        self.images, self.labels, self.transform, self.seed = images, labels, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, epoch, draw = key
        path = self.images[index]
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1).float().div(255)
        mask = torch.from_numpy(read_mask(self.labels / f"{path.stem}.png").astype(np.int64))
        image, mask = self.transform(image, mask, np.random.default_rng([self.seed, epoch, draw]))
        return {"image": image, "mask": mask}


# ------------------------------------------------------------------------------------ model
def build_segmenter(cfg: SSegPlusConfig, num_classes: int, device, weights: str | None = None):
    """The second-stage ViT + DPT for ``num_classes`` (train mode)."""
    return build_dpt_segmenter(cfg.backbone, num_classes, weights=weights or cfg.weights, device=str(device),
                               arch_overrides=cfg.arch_overrides or None, layers=cfg.layers,
                               features=cfg.head_features, out_channels=cfg.head_out_channels,
                               stem_channels=cfg.stem_channels)


def build_model(cfg: SSegPlusConfig, num_classes: int, device, teacher_init: bool = False):
    """The second-stage model (train mode) and AdamW with encoder / head learning rates.
    teacher_init: with ``student_init: sseg``, copy the S-Seg teacher's ViT into the encoder."""
    model = build_segmenter(cfg, num_classes, device)
    if teacher_init and cfg.student_init == "sseg":
        copy_teacher(cfg, model)
    groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
              {"params": list(model.head.parameters()), "lr": cfg.lr * cfg.lr_head_multiplier}]
    return model, torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def copy_teacher(cfg: SSegPlusConfig, model) -> None:
    """Copy the S-Seg teacher's ViT (and its convolutional stem) into ``model``."""
    from leafseg.errors import ConfigError

    teacher, _ = load_sseg(cfg.sseg_checkpoint, "cpu")
    state = teacher.maskformer.backbone.encoder.state_dict()
    mine = model.encoder.state_dict()
    if state.keys() != mine.keys() or any(state[k].shape != mine[k].shape for k in mine):
        raise ConfigError(f"student_init=sseg needs the teacher's backbone architecture: {cfg.sseg_checkpoint} "
                          f"holds another ViT than backbone={cfg.backbone!r} with these arch_overrides")
    model.encoder.load_state_dict(state)
    stem = teacher.maskformer.backbone.stem
    if model.head.stem is not None and stem is not None:
        if stem.channels != model.head.stem.channels:
            raise ConfigError(f"student_init=sseg copies the teacher's stem: stem_channels={cfg.stem_channels} "
                              f"but the teacher's has {stem.channels}")
        model.head.stem.load_state_dict(stem.state_dict())


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Pseudo-label, train, evaluate. resume: continue from ``out_dir/checkpoints/last.pt`` (True) or a
    path; overwrite: replace an earlier run in ``out_dir``. Returns miou (S-Seg+), sseg_miou (the teacher,
    if evaluated), iterations, out_dir. Under torchrun every process labels and trains on its share."""
    cfg = load_config(SSegPlusConfig, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume, overwrite)


def train(cfg: SSegPlusConfig, info, resume: bool | str = False, overwrite: bool = False) -> dict:
    """Label the target images, then cross-entropy on the pseudo-labels (255 ignored); checkpoints every
    ``save_every`` iterations and at the end."""
    from leafseg.data.datasets import build_dataset

    run = Run(RECIPE, cfg, info, resume=resume, overwrite=overwrite, extra_outputs=("pseudo_labels", "final.pt"))
    seed_everything(cfg.seed)  # the same initial weights on every rank
    val = build_dataset(cfg.eval.dataset, cfg.eval.root, split=cfg.eval.split)
    classes = list(cfg.classes) if cfg.classes else list(val.classes)
    t0 = time.perf_counter()
    labels = pseudo_label(cfg, classes, val.has_background, info.device, info.rank, info.world_size)
    barrier()
    label_seconds = time.perf_counter() - t0
    images = list_images(cfg.target_images)[: cfg.target_limit]
    data = PseudoLabelled(images, labels, RandomScaleCropFlip(cfg.crop_size, tuple(cfg.scale_range)), cfg.seed)
    model, optimizer = build_model(cfg, len(classes), info.device, teacher_init=True)
    scheduler = poly_schedule(optimizer, cfg.iterations, cfg.poly_power)
    s = run.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    run.start(cfg.iterations)
    run.save_protocol(cfg.eval.resolve(getattr(val, "name", None) or cfg.eval.dataset))
    student = wrap_ddp(model, info)
    epoch_draws = max(len(data), cfg.batch_size * info.world_size)
    per_epoch = epoch_draws // info.world_size // cfg.batch_size
    while s.iteration < cfg.iterations:
        epoch, start = divmod(s.iteration, per_epoch)
        sampler = ResumableSampler(len(data), epoch_draws, num_replicas=info.world_size, rank=info.rank, seed=cfg.seed)
        sampler.set_epoch(epoch)
        sampler.set_start(start * cfg.batch_size)
        for batch in DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                                drop_last=True, pin_memory=info.device.type == "cuda", generator=torch.Generator()):
            with run.precision.autocast():
                logits = student(batch["image"].to(info.device, non_blocking=True))
            loss = cross_entropy(logits.float(), batch["mask"].to(info.device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[1]["lr"]
            scheduler.step()
            s.iteration += 1
            s.epoch, s.batches_done = divmod(s.iteration, per_epoch)
            run.step_done({"loss": loss.detach()}, {"lr_head": lr}, cfg.batch_size, cfg.iterations)
            if s.iteration % cfg.save_every == 0 or s.iteration >= cfg.iterations:
                run.save(model=model.state_dict(), optimizer=optimizer, scheduler=scheduler)
            if run.stop_requested():
                return run.stopped()
            if s.iteration >= cfg.iterations:
                break
    model.eval()
    if info.is_main:
        export_weights(run.out / "final.pt", model.state_dict(), recipe=RECIPE, config=config_dict(cfg),
                       extra={"classes": classes})
    result = {"iterations": s.iteration, "out_dir": str(run.out), "checkpoint": str(run.out / "final.pt"),
              "pseudo_label_seconds": label_seconds, "weights_sha256": state_digest(model),
              "train_log": run.train_rows()}
    result.update(evaluate_plus(cfg, model, val, classes, info.device, run.out))
    run.log_eval({"iteration": s.iteration, **{k: v for k, v in result.items() if k in
                                                 ("miou", "acc", "iou", "sseg_miou", "sseg_acc")}})
    return run.finish(result)


def evaluate_plus(cfg: SSegPlusConfig, model, val, classes: list, device, out: Path) -> dict:
    """mIoU of the S-Seg+ model (argmax over all classes) under ``cfg.eval``'s protocol and, optionally,
    of the S-Seg teacher under its own protocol with this run's templates and background rule."""
    from leafseg.eval.harness import evaluate

    protocol = cfg.eval.resolve(getattr(val, "name", None) or cfg.eval.dataset)
    report = evaluate(segmenter(model, classes), val, protocol, out / "eval", progress=False, device=device,
                      method_name=RECIPE, config=config_dict(cfg))
    result = {"miou": report.miou, "acc": report.acc, "iou": list(report.metrics["per_class_iou"].values())}
    if cfg.eval_teacher:
        teacher, scfg = load_sseg(cfg.sseg_checkpoint, str(device))
        teacher_protocol = scfg.eval.resolve(getattr(val, "name", None)).with_overrides(
            {"templates": cfg.templates, "background": cfg.background, "bg_threshold": cfg.bg_threshold,
             "batch_size": protocol.batch_size, "workers": 0})
        teach = evaluate_sseg(teacher, scfg, device, class_names=classes, dataset=val, protocol=teacher_protocol)
        result.update(sseg_miou=teach.miou, sseg_acc=teach.acc)
    return result


def segmenter(model, classes: list) -> ModelSegmenter:
    """The model as a harness method over its own classes (``class_names``)."""
    method = ModelSegmenter(model, num_classes=len(classes))
    method.class_names = list(classes)
    return method


def load_segmenter(exported: dict, device: str) -> ModelSegmenter:
    """Exported S-Seg+ weights as a harness method."""
    cfg = load_config(SSegPlusConfig, None, exported["config"])
    classes = exported["extra"]["classes"]
    model = build_segmenter(cfg, len(classes), device, weights="random")
    model.load_state_dict(exported["model"])
    return segmenter(model.eval(), classes)
