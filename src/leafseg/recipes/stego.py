"""STEGO (Hamilton et al., "Unsupervised Semantic Segmentation by Distilling Feature Correspondences"):
label-free segmentation from a frozen self-supervised encoder.

Reads top to bottom like the paper: config -> data (fixed square views of the training images; a k-NN table
of the views under the frozen encoder, cached beside the data) -> model (the frozen encoder; a head of a
linear and a nonlinear 1x1 branch giving 70-d codes; a cluster probe of K centroids; a linear probe fed labels,
an evaluation device only) -> one training step (features of each image and of one of its neighbours; the
correspondence loss on self, k-NN and random pairs; the probes on detached codes) -> loop -> checkpoint ->
evaluation through the harness (cluster ids, Hungarian-matched to the classes: preset ``stego``) -> export.

    from leafseg.recipes.stego import run
    result = run("configs/stego/synthetic.yaml", ["out_dir=runs/stego"])
    leafseg eval model synthetic data/synthetic_stego --weights runs/stego/final.safetensors \
        --preset runs/stego/protocol.yaml

Labels: the training masks feed only the linear probe, which reads detached codes; nothing that shapes the
head or the centroids sees a label (tests/test_stego.py checks the gradients).

Distributed: launch with ``torchrun --nproc_per_node N``; ``batch_size`` is per process, the random partners
are drawn within each process's batch, DDP averages the gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from leafseg.data.views import CropViews, NeighbourPairs
from leafseg.errors import ConfigError
from leafseg.recipes.stego_config import (
    BackboneSettings,
    HeadSettings,
    KnnSettings,
    LossSettings,
    ProbeSettings,
    StegoConfig,
    check_config,
)
from leafseg.recipes.stego_model import (
    LinearSegmenter,
    StegoModel,
    StegoSegmenter,
    build_encoder,
    build_model,
    cluster_names,
    encode,
    load_segmenter,
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
    wrap_ddp,
)

RECIPE = "stego"
CONFIG = StegoConfig
WEIGHTS = "final.safetensors"

__all__ = ["CONFIG", "BackboneSettings", "Data", "HeadSettings", "KnnSettings", "LossSettings", "ProbeSettings",
           "StegoConfig", "StegoModel", "StegoSegmenter", "build_data", "build_encoder", "build_model",
           "check_config", "evaluate_stego", "load_segmenter", "neighbour_table", "run", "train", "train_step"]


# ------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """The training views, the evaluation dataset and the epoch length."""

    views: CropViews
    val: object
    iters_per_epoch: int

    @property
    def num_classes(self) -> int:
        return len(self.val.classes)


def build_data(cfg: StegoConfig, info) -> Data:
    """Training views of ``dataset``/``train_split`` and the evaluation set (``eval.dataset`` or ``dataset``,
    split ``eval.split``); the synthetic world is written first by the main rank when asked."""
    from leafseg.data.datasets import build_dataset

    if cfg.dataset == "synthetic" and cfg.synthetic is not None and info.is_main:
        cfg.synthetic.ensure(cfg.data_root)
    barrier()
    train = build_dataset(cfg.dataset, cfg.data_root, split=cfg.train_split, on_error=cfg.on_error,
                          **cfg.dataset_options)
    same = cfg.eval.dataset in (None, cfg.dataset)
    val = build_dataset(cfg.eval.dataset or cfg.dataset, cfg.eval.root or cfg.data_root, split=cfg.eval.split,
                        on_error=cfg.on_error, **(cfg.dataset_options if same else {}))
    views = CropViews(train, cfg.image_size, five_crop=cfg.five_crop, crop_ratio=cfg.crop_ratio)
    ipe = len(views) // (cfg.batch_size * info.world_size)
    if ipe < 1:
        raise ConfigError(f"{len(views)} training views give no full batch of batch_size={cfg.batch_size} on "
                          f"{info.world_size} process(es)")
    return Data(views, val, ipe)


def neighbour_table(cfg: StegoConfig, encoder, views: CropViews, info) -> torch.Tensor:
    """(N, k) k-NN table of the views (:func:`leafseg.grouping.knn.knn_table`): computed once by the main rank
    and cached in ``knn.cache_dir`` (default ``<data_root>/knn``), read by the others."""
    from leafseg.grouping.knn import knn_table

    kw = dict(k=cfg.knn.k, cache_dir=cfg.knn.cache_dir or Path(cfg.data_root) / "knn",
              fingerprint=f"{cfg.dataset}:{cfg.train_split}:{views.fingerprint()}", resolution=cfg.image_size,
              layer=cfg.backbone.layer, batch_size=cfg.knn.batch_size, num_workers=cfg.num_workers,
              device=info.device)
    table = knn_table(encoder, views, progress=cfg.progress, **kw) if info.is_main else None
    barrier()
    return table if table is not None else knn_table(encoder, views, progress=False, **kw)


def make_loader(pairs: NeighbourPairs, cfg: StegoConfig, info, epoch: int, start_batch: int) -> DataLoader:
    """One epoch of (view, neighbour) batches, starting after ``start_batch`` batches."""
    sampler = ResumableSampler(len(pairs), num_replicas=info.world_size, rank=info.rank, seed=cfg.seed)
    sampler.set_epoch(epoch)
    sampler.set_start(start_batch * cfg.batch_size)
    return DataLoader(pairs, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      drop_last=True, pin_memory=info.device.type == "cuda", generator=torch.Generator())


# ------------------------------------------------------------------------------- train step
def train_step(model, encoder, batch: dict, *, layer: int, device, precision=None) -> tuple[torch.Tensor, dict]:
    """One iteration's loss. batch: image (B, 3, S, S), neighbour (B, 3, S, S), mask (B, S, S). ``model`` is the
    (DDP-wrapped) :class:`StegoModel`; the frozen encoder runs under no_grad (and autocast on CUDA). Returns
    (the loss, its detached parts)."""
    images = torch.cat([batch["image"], batch["neighbour"]]).to(device, non_blocking=True)
    with precision.autocast() if precision is not None else torch.autocast(device.type, enabled=False):
        maps = encode(encoder, images, layer)
    feats, knn_feats = maps.chunk(2)
    masks = batch["mask"].to(device, non_blocking=True) if getattr(model, "module", model).linear is not None \
        else None
    return model(feats, knn_feats, masks)


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (fresh), True (continue from ``out_dir/checkpoints/last.pt``), or a checkpoint path;
    overwrite: replace an earlier run in ``out_dir``. Returns the run's figures (miou, acc, linear_miou, ...).
    """
    cfg = load_config(StegoConfig, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume, overwrite)


def train(cfg: StegoConfig, info, resume: bool | str = False, overwrite: bool = False) -> dict:
    """The loop: (view, neighbour) batches, one Adam step each, logs, checkpoints, evaluations."""
    run = Run(RECIPE, cfg, info, resume=resume, overwrite=overwrite, extra_outputs=(WEIGHTS,))
    data = build_data(cfg, info)
    encoder = build_encoder(cfg.backbone, info.device)
    table = neighbour_table(cfg, encoder, data.views, info)
    seed_everything(cfg.seed)  # the same initial head and centroids on every rank
    model = build_model(cfg, encoder.embed_dim, num_clusters=cfg.probes.clusters or data.num_classes,
                        num_classes=data.num_classes, ignore_index=data.val.ignore_index).to(info.device)
    seed_everything(cfg.seed + info.rank)  # each rank its own dropout, points and partners
    probes = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    optimizer = torch.optim.Adam([{"params": list(model.head.parameters()), "lr": cfg.lr},
                                  {"params": probes, "lr": cfg.probes.lr}])
    s = run.restore(model=model, optimizer=optimizer)
    run.start(cfg.iterations)
    run.save_protocol(cfg.eval.resolve(data.val.name))
    student, pairs = wrap_ddp(model, info), NeighbourPairs(data.views, table, seed=cfg.seed)
    while s.iteration < cfg.iterations:
        epoch, start = divmod(s.iteration, data.iters_per_epoch)
        for batch in make_loader(pairs, cfg, info, epoch, start):
            loss, parts = train_step(student, encoder, batch, layer=cfg.backbone.layer, device=info.device,
                                     precision=run.precision)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            s.iteration += 1
            s.epoch, s.batches_done = divmod(s.iteration, data.iters_per_epoch)
            run.step_done({"loss": loss.detach(), **parts}, {"lr": cfg.lr}, cfg.batch_size, cfg.iterations)
            if cfg.eval.every and s.iteration % cfg.eval.every == 0 and s.iteration < cfg.iterations:
                log_eval(run, model, encoder, data, cfg)
            if s.iteration % cfg.save_every == 0 and s.iteration < cfg.iterations:
                run.save(model=model.state_dict(), optimizer=optimizer)
            if run.stop_requested():
                return run.stopped()
            if s.iteration >= cfg.iterations:
                break
    return finish(run, model, encoder, data, cfg)


# ------------------------------------------------------------------------------- evaluation
def evaluate_stego(model: StegoModel, encoder, cfg: StegoConfig, dataset, device, out_dir=None) -> dict:
    """Harness evaluation under ``cfg.eval``'s protocol: the cluster probe's ids Hungarian-matched to the classes
    (``miou``, ``acc``, ``iou``, ``assignment``) and, when there is one, the linear probe (``linear_miou``,
    ``linear_acc``). The model is left in the mode it was in."""
    from leafseg.eval.harness import evaluate

    was_training = model.training
    protocol = cfg.eval.resolve(dataset.name)
    method = StegoSegmenter(encoder, model.head, model.cluster.centroids, layer=cfg.backbone.layer)
    report = evaluate(method, dataset, protocol, out_dir, progress=False, device=device, method_name=RECIPE,
                      config=config_dict(cfg))
    row = {"miou": report.miou, "acc": report.acc, "iou": list(report.metrics["per_class_iou"].values()),
           "assignment": report.metrics["assignment"]}
    if model.linear is not None:
        linear = evaluate(LinearSegmenter(encoder, model.head, model.linear, layer=cfg.backbone.layer), dataset,
                          protocol, None, progress=False, device=device, method_name=f"{RECIPE}_linear")
        row.update(linear_miou=linear.miou, linear_acc=linear.acc)
    model.train(was_training)
    return row


def log_eval(run: Run, model: StegoModel, encoder, data: Data, cfg: StegoConfig) -> dict:
    """Evaluate; one row of metrics.csv (the evaluation's files in ``out_dir/eval``)."""
    row = evaluate_stego(model, encoder, cfg, data.val, run.info.device,
                         out_dir=run.out / "eval" if run.info.is_main else None)
    run.log_eval({"iteration": run.state.iteration, **row})
    return row


def finish(run: Run, model: StegoModel, encoder, data: Data, cfg: StegoConfig) -> dict:
    """Last evaluation, exported weights (``final.safetensors``: head, centroids, linear probe, the config; the
    clusters named by the classes they were matched to), ``results.json``."""
    last = log_eval(run, model, encoder, data, cfg)
    names = cluster_names(last["assignment"], data.val.classes, model.cluster.num_clusters)
    if run.info.is_main:
        export_weights(run.out / WEIGHTS, model.state_dict(), recipe=RECIPE, config=config_dict(cfg),
                       extra={"classes": names, "dataset_classes": list(data.val.classes)})
    train_log = run.train_rows()
    result = {"iterations": run.state.iteration, "out_dir": str(run.out), "weights": str(run.out / WEIGHTS),
              "miou": last["miou"], "acc": last["acc"], "linear_miou": last.get("linear_miou"),
              "linear_acc": last.get("linear_acc"), "loss": cfg.loss.values(), "history": run.state.history,
              "final_train": train_log[-1] if train_log else {}, "weights_sha256": state_digest(model),
              "train_log": train_log}
    return run.finish(result)
