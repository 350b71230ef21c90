"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021): label-free
pretraining of a ViT by self-distillation, here to give the label-free recipes (STEGO, FUSS) a frozen
encoder that knows a world without ever seeing its labels.

Reads top to bottom like the paper: config -> data (the training images only: the dataset's masks are
dropped before anything is read) -> model (a student ViT + projection head; a teacher, the same weights) ->
one training step (multi-crop: 2 global + local views of each image; the teacher sees the global views, the
student all of them; cross-entropy between the teacher's centred, sharpened output and the student's on
every other view) -> the teacher follows the student as an EMA, the centre follows the teacher -> loop ->
checkpoint -> evaluation of the teacher (global k-means of its patch features over the training images,
Hungarian-matched to the classes by the harness) -> export: the teacher's ViT as a weights folder.

    from leafseg.recipes.dino import run
    result = run("configs/dino/synthetic.yaml", ["out_dir=runs/dino"])
    build_backbone("dino_vits8", weights="runs/dino/encoder")      # the teacher, e.g. model.weights=... of FUSS
    leafseg eval model synthetic data/synthetic_dino --weights runs/dino/final.safetensors \
        --preset runs/dino/protocol.yaml                            # the k-means probe's mIoU, exactly

Labels: the training split is read as images (:class:`leafseg.data.images.ImageViews` keeps the image paths
only); the validation masks score the probe, after the fact. Distributed: launch with ``torchrun``;
``batch_size`` is per process; DDP averages the student's gradients, the centre is averaged over processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from leafseg.data.images import ImageViews
from leafseg.data.multicrop import MultiCrop
from leafseg.errors import ConfigError
from leafseg.recipes.dino_config import DinoConfig, check_config
from leafseg.recipes.dino_model import (
    DinoModel,
    FeatureClusters,
    build_model,
    cosine_schedule,
    ema_update,
    export_encoder,
    load_segmenter,
    param_groups,
    patch_features,
    teacher_temperature,
)
from leafseg.training import (
    ResumableSampler,
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

RECIPE = "dino"
CONFIG = DinoConfig
WEIGHTS = "final.safetensors"
ENCODER = "encoder"

__all__ = ["CONFIG", "Data", "DinoConfig", "build_augment", "build_data", "check_config", "evaluate_teacher",
           "load_segmenter", "run", "train", "train_step"]


# ------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """The training images (no masks), the evaluation dataset and the epoch length."""

    images: ImageViews
    val: object
    iters_per_epoch: int

    @property
    def num_classes(self) -> int:
        return len(self.val.classes)


def build_data(cfg: DinoConfig, info) -> Data:
    """The images of ``dataset``/``train_split`` (mask paths dropped) and the evaluation set (``eval.dataset``
    or ``dataset``, split ``eval.split``); the synthetic world is written first by the main rank when asked."""
    from leafseg.data.datasets import build_dataset

    if cfg.dataset == "synthetic" and cfg.synthetic is not None and info.is_main:
        cfg.synthetic.ensure(cfg.data_root)
    barrier()
    train = build_dataset(cfg.dataset, cfg.data_root, split=cfg.train_split, **cfg.dataset_options)
    images = ImageViews.of(train, cfg.image_size)
    same = cfg.eval.dataset in (None, cfg.dataset)
    val = build_dataset(cfg.eval.dataset or cfg.dataset, cfg.eval.root or cfg.data_root, split=cfg.eval.split,
                        **(cfg.dataset_options if same else {}))
    ipe = len(images) // (cfg.batch_size * info.world_size)
    if ipe < 1:
        raise ConfigError(f"{len(images)} training images give no full batch of batch_size={cfg.batch_size} on "
                          f"{info.world_size} process(es)")
    return Data(images, val, ipe)


def make_loader(images: ImageViews, cfg: DinoConfig, info, epoch: int, start_batch: int) -> DataLoader:
    """One epoch of image batches, starting after ``start_batch`` batches."""
    sampler = ResumableSampler(len(images), num_replicas=info.world_size, rank=info.rank, seed=cfg.seed)
    sampler.set_epoch(epoch)
    sampler.set_start(start_batch * cfg.batch_size)
    return DataLoader(images, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      drop_last=True, pin_memory=info.device.type == "cuda", generator=torch.Generator())


def build_augment(cfg: DinoConfig) -> MultiCrop:
    c = cfg.crops
    return MultiCrop(c.global_size, c.local_size, global_crops=c.global_crops, local_crops=c.local_crops,
                     global_scale=tuple(c.global_scale), local_scale=tuple(c.local_scale), jitter=tuple(c.jitter),
                     jitter_p=c.jitter_p, grayscale_p=c.grayscale_p, blur_sigma=tuple(c.blur_sigma),
                     blur_p=tuple(c.blur_p), solarize_p=c.solarize_p)


# ------------------------------------------------------------------------------- train step
def train_step(model: DinoModel, student, batch: dict, *, augment: MultiCrop, teacher_temp: float, device,
               precision) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One iteration's loss. batch: image (B, 3, S, S) in [0, 1] (nothing else is read). ``student`` is the
    (DDP-wrapped) ``model.student``. Returns (the loss, the teacher's logits (G, B, K) for the centre, detached
    parts for the log: the teacher's mean per-image entropy and the entropy of its mean output)."""
    views = augment(batch["image"].to(device, non_blocking=True))
    g = augment.global_crops
    with precision.autocast():
        with torch.no_grad():
            teacher = model.teacher(views[:g]).float()
        out = student(views).float()
    loss = model.loss(out, teacher, teacher_temp)
    with torch.no_grad():
        probs = torch.softmax((teacher - model.loss.center.reshape(1, 1, -1)) / teacher_temp, dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        mean = probs.mean(dim=(0, 1))
        spread = -(mean * mean.clamp_min(1e-12).log()).sum()
    return loss, teacher, {"teacher_entropy": entropy, "batch_entropy": spread}


def optimiser_step(model: DinoModel, optimizer, cfg: DinoConfig, iteration: int) -> None:
    """Gradient clipping (per parameter, to ``grad_clip``), the frozen prototypes, the scheduled weight decay,
    the step."""
    params = [p for p in model.student.parameters() if p.grad is not None]
    if cfg.grad_clip > 0:
        for p in params:
            torch.nn.utils.clip_grad_norm_([p], cfg.grad_clip)
    if iteration < cfg.distill.freeze_prototypes:
        model.student.head.prototypes.grad = None
    wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, iteration, cfg.iterations)
    for group in optimizer.param_groups:
        if group["decay"]:
            group["weight_decay"] = wd
    optimizer.step()


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (fresh), True (continue from ``out_dir/checkpoints/last.pt``), or a checkpoint path;
    overwrite: replace an earlier run in ``out_dir``. Returns the run's figures (miou of the teacher's k-means
    probe, start_miou of the initial teacher, the encoder folder, ...).
    """
    cfg = load_config(DinoConfig, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume, overwrite)


def train(cfg: DinoConfig, info, resume: bool | str = False, overwrite: bool = False) -> dict:
    """The loop: image batches, multi-crop, one AdamW step, the EMA and the centre; logs, checkpoints, probes."""
    run = Run(RECIPE, cfg, info, resume=resume, overwrite=overwrite, extra_outputs=(WEIGHTS, ENCODER))
    data = build_data(cfg, info)
    seed_everything(cfg.seed)  # the same head on every rank
    model = build_model(cfg, info.device)
    seed_everything(cfg.seed + info.rank)  # each rank its own crops
    optimizer = torch.optim.AdamW(param_groups(model.student), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine_schedule(optimizer, cfg.iterations, cfg.warmup, cfg.min_lr / cfg.lr)
    s = run.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    run.start(cfg.iterations)
    run.save_protocol(cfg.eval.resolve(data.val.name))
    if cfg.probe.at_start and s.iteration == 0:
        log_eval(run, model, data, cfg)
    augment, student = build_augment(cfg), wrap_ddp(model.student, info)
    while s.iteration < cfg.iterations:
        epoch, start = divmod(s.iteration, data.iters_per_epoch)
        for batch in make_loader(data.images, cfg, info, epoch, start):
            temp = teacher_temperature(cfg, s.iteration)
            loss, teacher_out, parts = train_step(model, student, batch, augment=augment, teacher_temp=temp,
                                                  device=info.device, precision=run.precision)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = optimizer.param_groups[0]["lr"]
            optimiser_step(model, optimizer, cfg, s.iteration)
            scheduler.step()
            model.loss.update_center(teacher_out)
            momentum = cosine_schedule(cfg.distill.momentum, 1.0, s.iteration, cfg.iterations)
            ema_update(model.teacher, model.student, momentum)
            s.iteration += 1
            s.epoch, s.batches_done = divmod(s.iteration, data.iters_per_epoch)
            run.step_done({"loss": loss.detach(), **parts},
                          {"lr": lr, "teacher_temp": temp, "momentum": momentum}, cfg.batch_size, cfg.iterations)
            if cfg.eval.every and s.iteration % cfg.eval.every == 0 and s.iteration < cfg.iterations:
                log_eval(run, model, data, cfg)
            if s.iteration % cfg.save_every == 0 and s.iteration < cfg.iterations:
                run.save(model=model.state_dict(), optimizer=optimizer, scheduler=scheduler)
            if run.stop_requested():
                return run.stopped()
            if s.iteration >= cfg.iterations:
                break
    return finish(run, model, data, cfg)


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def fit_centroids(encoder, images: ImageViews, *, k: int, layer: int, batch_size: int, seed: int,
                  device) -> torch.Tensor:
    """(k, C) spherical k-means centroids of the encoder's patch features over every training view."""
    from leafseg.grouping import batched_kmeans

    feats = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([images[i]["image"] for i in range(start, min(start + batch_size, len(images)))])
        feats.append(patch_features(encoder, batch.to(device), layer).permute(0, 2, 3, 1).flatten(0, 2))
    return batched_kmeans(torch.cat(feats)[None], k, metric="cosine", seed=seed).centroids[0]


def evaluate_teacher(encoder, cfg: DinoConfig, data: Data, device, out_dir=None) -> tuple[dict, torch.Tensor]:
    """The k-means probe of ``encoder`` under ``cfg.eval``'s protocol: centroids fitted on the training views
    (no label), validation pixels assigned by cosine, clusters Hungarian-matched to the classes by the harness.
    Returns ({miou, acc, iou, assignment}, the centroids (K, C)). The encoder is left in the mode it was in."""
    from leafseg.eval.harness import evaluate

    was_training = encoder.training
    encoder.eval()
    k = cfg.probe.clusters or data.num_classes
    centroids = fit_centroids(encoder, data.images, k=k, layer=cfg.backbone.layer, batch_size=cfg.probe.batch_size,
                              seed=cfg.seed, device=device)
    method = FeatureClusters(encoder, centroids, layer=cfg.backbone.layer)
    report = evaluate(method, data.val, cfg.eval.resolve(data.val.name), out_dir, progress=False, device=device,
                      method_name=RECIPE, config=config_dict(cfg))
    encoder.train(was_training)
    row = {"miou": report.miou, "acc": report.acc, "iou": list(report.metrics["per_class_iou"].values()),
           "assignment": report.metrics["assignment"]}
    return row, centroids


def log_eval(run: Run, model: DinoModel, data: Data, cfg: DinoConfig) -> tuple[dict, torch.Tensor]:
    """Probe the teacher; one row of metrics.csv (the evaluation's files in ``out_dir/eval``)."""
    with torch.random.fork_rng(devices=[]):  # the probe draws nothing from the training stream
        row, centroids = evaluate_teacher(model.teacher.encoder, cfg, data, run.info.device,
                                          out_dir=run.out / "eval" if run.info.is_main else None)
    run.log_eval({"iteration": run.state.iteration, **row})
    return row, centroids


def finish(run: Run, model: DinoModel, data: Data, cfg: DinoConfig) -> dict:
    """Last probe; exports: the teacher's ViT as a weights folder (``encoder/``) and ``final.safetensors``
    (the teacher's ViT and the probe's centroids, clusters named by the classes they were matched to, for
    ``leafseg eval model`` / ``segment``); ``results.json``."""
    from leafseg.recipes.stego_model import cluster_names

    last, centroids = log_eval(run, model, data, cfg)
    if run.info.is_main:
        export_encoder(model.teacher.encoder, run.out / ENCODER)
        tensors = {f"encoder.{k}": v for k, v in model.teacher.encoder.state_dict().items()}
        names = cluster_names(last["assignment"], data.val.classes, centroids.shape[0])
        export_weights(run.out / WEIGHTS, {**tensors, "centroids": centroids}, recipe=RECIPE,
                       config=config_dict(cfg), extra={"classes": names, "dataset_classes": list(data.val.classes)})
    barrier()
    train_log = run.train_rows()
    first = run.state.history[0] if run.state.history and run.state.history[0]["iteration"] == 0 else {}
    result = {"iterations": run.state.iteration, "out_dir": str(run.out), "encoder": str(run.out / ENCODER),
              "weights": str(run.out / WEIGHTS), "miou": last["miou"], "acc": last["acc"],
              "start_miou": first.get("miou"), "start_acc": first.get("acc"), "history": run.state.history,
              "final_train": train_log[-1] if train_log else {}, "weights_sha256": state_digest(model),
              "train_log": train_log}
    return run.finish(result)
