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
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from leafseg.data.io import list_images, palette, read_image, read_mask, write_mask
from leafseg.data.transforms import RandomScaleCropFlip
from leafseg.eval.background import apply_background, prompt_classes
from leafseg.eval.methods import ModelSegmenter, register_model_loader
from leafseg.heads import build_dpt_segmenter
from leafseg.losses import cross_entropy
from leafseg.recipes.sseg import SSegSegmenter, evaluate_sseg, load_sseg
from leafseg.training import (
    MetricsLog,
    PolyLR,
    ResumableSampler,
    config_dict,
    load_checkpoint,
    load_config,
    progress,
    rng_states,
    save_checkpoint,
    save_config,
    seed_everything,
    set_rng_states,
)
from leafseg.training.runinfo import run_record, write_json


@dataclass
class SSegPlusConfig:
    """Every setting of a self-training run."""

    sseg_checkpoint: str = "runs/sseg/final.pt"
    # target dataset: unlabelled training images (their masks are never read) and class names
    target_images: str = "data/synthetic64/images/train"
    target_limit: int | None = None
    classes: list | None = None              # prompt entries (synonyms allowed); null: the eval dataset's
    templates: str = "single"
    background: str = "none"                 # none | threshold (class 0 = background below bg_threshold)
    bg_threshold: float = 0.0
    min_confidence: float = 0.0              # pixels whose best score is below: ignored (255)
    label_size: int | None = None            # pseudo-label at this square size (batched); null: own size
    # second-stage model: a registry ViT + DPT head
    backbone: str = "dino_vits8"
    weights: str | None = "random"
    arch_overrides: dict = field(default_factory=dict)
    layers: list | None = None
    head_features: int | None = None
    head_out_channels: list | None = None
    stem_channels: int = 0                   # >0: a convolutional stem adds local features (leafseg.heads.stem)
    student_init: str = "none"               # none: the backbone as `weights` says | sseg: start from the
                                             # teacher's trained ViT (needs the same architecture)
    # training
    crop_size: int = 448
    scale_range: list = field(default_factory=lambda: [0.5, 2.0])
    batch_size: int = 8
    iterations: int = 4000
    lr: float = 1e-4                         # encoder; the head gets lr * lr_head_multiplier
    lr_head_multiplier: float = 10.0
    weight_decay: float = 0.01
    poly_power: float = 0.9
    # evaluation (also scores the S-Seg teacher, for the self-training gain)
    eval_dataset: str = "synthetic"
    eval_root: str = "data/synthetic64"
    eval_split: str = "val"
    eval_batch_size: int = 1
    eval_teacher: bool = True
    # system
    device: str = "cpu"
    seed: int = 0
    out_dir: str = "runs/sseg_plus"
    num_workers: int = 2
    save_every: int = 1000
    stop_after: int = 0
    log_every: int = 20
    progress: bool = True


# ---------------------------------------------------------------------------- pseudo-labels
@torch.no_grad()
def pseudo_label(cfg: SSegPlusConfig, classes: list, has_background: bool, device) -> Path:
    """Label every target image with the trained S-Seg; writes ``out_dir/pseudo_labels/<stem>.png``
    (palette PNGs of class ids, 255 = ignored). Existing labels are kept (resuming)."""
    folder = Path(cfg.out_dir) / "pseudo_labels"
    paths = list_images(cfg.target_images)[: cfg.target_limit]
    todo = [p for p in paths if not (folder / f"{p.stem}.png").exists()]
    if not todo:
        return folder
    model, _ = load_sseg(cfg.sseg_checkpoint, str(device))
    seg = SSegSegmenter(model)
    seg.prepare(prompt_classes(classes, has_background, cfg.background), SimpleNamespace(templates=cfg.templates))
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


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False) -> dict:
    """Pseudo-label, train, evaluate. resume: continue from ``out_dir/checkpoints/last.pt`` (True)
    or a path. Returns miou (S-Seg+), sseg_miou (the teacher, if evaluated), iterations, out_dir."""
    from leafseg.data.datasets import build_dataset

    cfg = load_config(SSegPlusConfig, config_path, overrides)
    if cfg.background not in ("none", "threshold"):
        raise ValueError(f"background must be none or threshold, got {cfg.background!r}")
    if cfg.student_init not in ("none", "sseg"):
        raise ValueError(f"student_init must be none or sseg, got {cfg.student_init!r}")
    out, device = Path(cfg.out_dir), torch.device(cfg.device)
    seed_everything(cfg.seed)
    val = build_dataset(cfg.eval_dataset, cfg.eval_root, split=cfg.eval_split)
    classes = list(cfg.classes) if cfg.classes else list(val.classes)
    save_config(cfg, out / "config.yaml")
    write_json(out / "run.json", run_record(seed=cfg.seed, config=config_dict(cfg), device=device))
    t0 = time.perf_counter()
    labels = pseudo_label(cfg, classes, val.has_background, device)
    label_seconds = time.perf_counter() - t0
    model, state = train(cfg, labels, len(classes), device, resume)
    if state.get("stopped"):
        return {"stopped_at": state["iteration"], "out_dir": str(out)}
    save_checkpoint({"recipe": "sseg_plus", "model": model.state_dict(), "config": config_dict(cfg),
                     "classes": classes}, out / "final.pt")
    result = {"iterations": state["iteration"], "out_dir": str(out), "checkpoint": str(out / "final.pt"),
              "pseudo_label_seconds": label_seconds}
    result.update(evaluate_plus(cfg, model, val, classes, device))
    write_json(out / "results.json", result)
    return result


def build_model(cfg: SSegPlusConfig, num_classes: int, device, teacher_init: bool = False):
    """The second-stage model (train mode) and AdamW with encoder / head learning rates.
    teacher_init: with ``student_init: sseg``, copy the S-Seg teacher's ViT into the encoder."""
    model = build_dpt_segmenter(cfg.backbone, num_classes, weights=cfg.weights, device=str(device),
                                arch_overrides=cfg.arch_overrides or None, layers=cfg.layers,
                                features=cfg.head_features, out_channels=cfg.head_out_channels,
                                stem_channels=cfg.stem_channels)
    if teacher_init and cfg.student_init == "sseg":
        teacher, _ = load_sseg(cfg.sseg_checkpoint, "cpu")
        state = teacher.maskformer.backbone.encoder.state_dict()
        mine = model.encoder.state_dict()
        if state.keys() != mine.keys() or any(state[k].shape != mine[k].shape for k in mine):
            raise ValueError(f"student_init=sseg needs the teacher's backbone architecture: {cfg.sseg_checkpoint} "
                             f"holds another ViT than backbone={cfg.backbone!r} with these arch_overrides")
        model.encoder.load_state_dict(state)
        stem = teacher.maskformer.backbone.stem
        if model.head.stem is not None and stem is not None:
            if stem.channels != model.head.stem.channels:
                raise ValueError(f"student_init=sseg copies the teacher's stem: stem_channels={cfg.stem_channels} "
                                 f"but the teacher's has {stem.channels}")
            model.head.stem.load_state_dict(stem.state_dict())
    groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
              {"params": list(model.head.parameters()), "lr": cfg.lr * cfg.lr_head_multiplier}]
    return model, torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(cfg: SSegPlusConfig, labels: Path, num_classes: int, device, resume) -> tuple:
    """Cross-entropy on the pseudo-labels (255 ignored); checkpoints every ``save_every``."""
    out = Path(cfg.out_dir)
    images = list_images(cfg.target_images)[: cfg.target_limit]
    data = PseudoLabelled(images, labels, RandomScaleCropFlip(cfg.crop_size, tuple(cfg.scale_range)), cfg.seed)
    model, optimizer = build_model(cfg, num_classes, device, teacher_init=True)
    scheduler = PolyLR(optimizer, cfg.iterations, cfg.poly_power)
    state, log = {"iteration": 0}, MetricsLog(out, "train_log")
    ckpt_path = Path(resume) if isinstance(resume, str) else out / "checkpoints" / "last.pt"
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_states(ckpt["rng"])
        state = dict(ckpt["state"])
    log.truncate_after(state["iteration"])
    epoch_draws = max(len(data), cfg.batch_size)
    per_epoch = epoch_draws // cfg.batch_size
    bar = progress(cfg.iterations, state["iteration"], cfg.progress, "sseg+")
    while state["iteration"] < cfg.iterations:
        epoch, start = divmod(state["iteration"], per_epoch)
        sampler = ResumableSampler(len(data), epoch_draws, seed=cfg.seed)
        sampler.set_epoch(epoch)
        sampler.set_start(start * cfg.batch_size)
        for batch in DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                                drop_last=True, generator=torch.Generator()):
            loss = cross_entropy(model(batch["image"].to(device)), batch["mask"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state["iteration"] += 1
            bar.update(1)
            if state["iteration"] % cfg.log_every == 0:
                log.log({"iteration": state["iteration"], "loss": float(loss.detach()),
                         "lr": optimizer.param_groups[1]["lr"]})
            if state["iteration"] % cfg.save_every == 0 or state["iteration"] >= cfg.iterations:
                save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "rng": rng_states(), "state": dict(state)},
                                out / "checkpoints" / "last.pt")
            if cfg.stop_after and state["iteration"] >= cfg.stop_after:
                return model, {**state, "stopped": True}
            if state["iteration"] >= cfg.iterations:
                break
    bar.close()
    return model.eval(), state


def evaluate_plus(cfg: SSegPlusConfig, model, val, classes: list, device) -> dict:
    """mIoU of the S-Seg+ model (argmax over all classes) and, optionally, of the S-Seg teacher
    under the same background rule."""
    from leafseg.eval.harness import evaluate
    from leafseg.eval.protocol import Protocol

    out = Path(cfg.out_dir)
    protocol = Protocol(name="sseg_plus", batch_size=cfg.eval_batch_size, workers=0)
    report = evaluate(ModelSegmenter(model, num_classes=len(classes)), val, protocol, out / "eval", progress=False,
                      device=device, method_name="sseg_plus", config=config_dict(cfg))
    result = {"miou": report.miou, "acc": report.acc, "iou": report.metrics.get("iou")}
    if cfg.eval_teacher:
        teacher, scfg = load_sseg(cfg.sseg_checkpoint, str(device))
        scfg.eval_templates, scfg.eval_background = cfg.templates, cfg.background
        scfg.eval_bg_threshold, scfg.eval_batch_size, scfg.num_workers = cfg.bg_threshold, cfg.eval_batch_size, 0
        teach = evaluate_sseg(teacher, scfg, device, class_names=classes, dataset=val)
        result.update(sseg_miou=teach.miou, sseg_acc=teach.acc)
    return result


def _load(ckpt: dict, device: str):
    cfg = SSegPlusConfig(**{**ckpt["config"], "weights": "random"})
    model, _ = build_model(cfg, len(ckpt["classes"]), device)
    model.load_state_dict(ckpt["model"])
    return ModelSegmenter(model.eval(), num_classes=len(ckpt["classes"]))


register_model_loader("sseg_plus", _load)
