"""Group, then recognise ("Associating Spatially-Consistent Grouping with Text-supervised Semantic
Segmentation"): regions from self-supervised features, recognised by a CLIP adapted to regions with
image-caption pairs only.

Reads top to bottom like the paper: config -> image-text data and the captions' noun vocabulary ->
model (a frozen CLIP, a frozen grouping encoder, M learnable region tokens initialised from CLIP's class
token, a learnable temperature) -> one training step (grouping under no_grad; CLIP embeds the M regions
of each image in one pass with the tokens; nouns of each caption, prompted and encoded by the frozen
text encoder, once per noun; the noun-region contrastive loss, section 3.2) -> loop -> checkpoint ->
evaluation through the harness with the ``grouping_clip`` method and the current tokens -> export of
the tokens and the temperature with the resolved config.

    from leafseg.recipes.grouping_clip import run
    result = run("configs/grouping_clip/synthetic.yaml", ["out_dir=runs/gclip"])
    leafseg segment photo.jpg --weights runs/gclip/final.safetensors --classes "road,sky,tree"

Only the tokens (M, C) and the temperature learn; everything in CLIP and the grouping encoder stays frozen
(the paper's "learnable token" row: fine-tuning all of CLIP loses 23 VOC mIoU points to it).

Distributed: launch with ``torchrun --nproc_per_node N``; ``batch_size`` is per process, the contrastive
negatives are gathered from every process, and DDP averages the token gradients.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor, nn

from leafseg.data.imagetext import build_image_text, epoch_batches
from leafseg.errors import ConfigError
from leafseg.eval.grouping_clip import GroupingClip
from leafseg.eval.prompts import noun_embeddings, text_embeddings
from leafseg.losses.noun_region import NounRegionLoss, NounRegionOutput
from leafseg.recipes.grouping_clip_config import (
    ClipSettings,
    GroupingClipConfig,
    GroupingSettings,
    LossSettings,
    RecognitionSettings,
    check_config,
)
from leafseg.text.nouns import build_noun_vocabulary
from leafseg.training import (
    Run,
    broadcast_object,
    config_dict,
    distributed_session,
    export_weights,
    load_config,
    seed_everything,
    state_digest,
    warmup_cosine_schedule,
    wrap_ddp,
)

RECIPE = "grouping_clip"
CONFIG = GroupingClipConfig
WEIGHTS = "final.safetensors"

__all__ = ["CONFIG", "ClipSettings", "GroupingClipConfig", "GroupingSettings", "LossSettings", "NounTable",
           "RecognitionSettings", "RegionAdaptation", "build_segmenter", "check_config", "evaluate_grouping_clip",
           "load_segmenter", "run", "train", "train_step"]


# ------------------------------------------------------------------------------------- data
def image_text_source(cfg: GroupingClipConfig, *, shuffle: bool = True, rank=None, world_size=None):
    """The training pairs as a streaming source (see :mod:`leafseg.data.imagetext`)."""
    kw = dict(image_size=cfg.image_size, shuffle_buffer=cfg.shuffle_buffer if shuffle else 0, seed=cfg.seed,
              random_crop=cfg.random_crop and shuffle, rank=rank, world_size=world_size)
    if cfg.data_layout == "folder":
        kw.update(split=cfg.data_split, n=cfg.data_limit)
    return build_image_text(cfg.data_layout, cfg.data, **kw)


def build_nouns_for(cfg: GroupingClipConfig, out: Path, info) -> set[str]:
    """The noun vocabulary of the training captions (:mod:`leafseg.text.nouns`), built by the main rank and
    saved to ``out/nouns.txt`` (one per line, most frequent first), read back on resume."""
    path = out / "nouns.txt"
    problem = None
    if info.is_main and not path.is_file():
        captions = image_text_source(cfg, shuffle=False, rank=0, world_size=1).captions(cfg.loss.vocab_captions)
        vocab = build_noun_vocabulary(captions, size=cfg.loss.vocab_size)
        if vocab:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(vocab) + "\n")
        else:
            problem = f"{cfg.data}: no nouns found in {len(captions)} captions (a noun follows a determiner or number)"
    problem = broadcast_object(problem)
    if problem:
        raise ConfigError(problem)
    return set(path.read_text().split())


def batches(cfg: GroupingClipConfig, run: Run):
    """Endless (epoch, batch number, skipped, batch) stream, resuming at the state's epoch after
    ``batches_done`` batches."""
    return epoch_batches(image_text_source(cfg), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                         epoch=run.state.epoch, skip=run.state.batches_done,
                         pin_memory=run.info.device.type == "cuda")


class NounTable:
    """Prompted noun embeddings of a frozen text encoder, each noun encoded once and kept.

    Each noun is encoded alone (its prompts in one call), so its embedding is the same number whatever the
    batch it first appears in: a resumed run computes exactly what an uninterrupted one did.
    Called with T nouns -> (T, E) unit rows (what :func:`leafseg.eval.prompts.noun_embeddings` asks of
    ``encode_text`` with the ``"name"`` template).
    """

    def __init__(self, encode_text, templates: str):
        self.encode_text, self.templates = encode_text, templates
        self.rows: dict[str, Tensor] = {}

    def __call__(self, nouns: list[str]) -> Tensor:
        for noun in nouns:
            if noun not in self.rows:
                self.rows[noun] = text_embeddings(self.encode_text, [[noun]], self.templates).embeddings[0]
        return torch.stack([self.rows[noun] for noun in nouns])


# ------------------------------------------------------------------------------------ model
class RegionAdaptation(nn.Module):
    """What learns: M region tokens (M, C) in the space of CLIP's class embedding, and the loss's temperature.

    forward(region_encoder, images (B, 3, S, S), masks (B, M, h, w), present (B, M) bool, nouns (B, N, E),
    noun_mask (B, N) bool, autocast) -> :class:`~leafseg.losses.noun_region.NounRegionOutput`. The frozen
    region encoder is an argument, not a submodule: under DDP only the tokens and the temperature are
    replicated and averaged.
    """

    def __init__(self, initial_tokens: Tensor, *, direction: str = "noun_to_region", init_temperature: float = 0.07):
        super().__init__()
        self.tokens = nn.Parameter(initial_tokens.detach().clone().float())
        self.loss = NounRegionLoss(direction, init_temperature)

    def forward(self, region_encoder: nn.Module, images: Tensor, masks: Tensor, present: Tensor, nouns: Tensor,
                noun_mask: Tensor, autocast=None) -> NounRegionOutput:
        with autocast or contextlib.nullcontext():
            regions = region_encoder(images, masks.float(), region_tokens=self.tokens)  # (B, M, E)
        return self.loss(regions.float(), present, nouns, noun_mask)


def build_segmenter(cfg: GroupingClipConfig, device, tokens: Tensor | None = None) -> GroupingClip:
    """The ``grouping_clip`` method of the config (its CLIP, grouping and recognition), on ``device``, with
    ``tokens`` (M, C) or CLIP's class-token copies."""
    from leafseg.backbones import build_backbone

    clip = build_backbone(cfg.clip.backbone, weights=cfg.clip.weights, device=str(device))
    g, r = cfg.grouping, cfg.recognition
    seg = GroupingClip(clip, group_backbone=g.backbone, group_weights=g.weights, num_regions=g.num_regions,
                       group_layer=g.layer, group_kind=g.kind, seed=g.seed, mode=r.mode,
                       masked_blocks=r.masked_blocks, threshold=r.threshold, tokens=tokens)
    return seg.to(device).eval()


def param_groups(adaptation: RegionAdaptation, cfg: GroupingClipConfig) -> list[dict]:
    """AdamW groups: weight decay on the tokens, none on the temperature."""
    return [{"params": [adaptation.tokens], "weight_decay": cfg.weight_decay},
            {"params": [adaptation.loss.logit_scale], "weight_decay": 0.0}]


# ------------------------------------------------------------------------------- train step
def train_step(adaptation: nn.Module, segmenter: GroupingClip, batch: dict, *, table: NounTable, vocab: set[str],
               cfg: GroupingClipConfig, device, precision=None) -> tuple[Tensor, dict]:
    """One iteration's loss. batch: image (B, 3, S, S), caption (B str). ``adaptation`` is the (DDP-wrapped)
    :class:`RegionAdaptation`. Returns (the loss, its detached parts to log)."""
    images = batch["image"].to(device, non_blocking=True)
    regions = segmenter.grouper(images)  # under no_grad: labels_low (B, h, w), present (B, M)
    nouns = noun_embeddings(batch["caption"], vocab, table, "name", max_nouns=cfg.loss.max_nouns)
    autocast = precision.autocast() if precision is not None else None
    out = adaptation(segmenter.regions, images, regions.low, regions.present, nouns.embeddings.to(device),
                     nouns.mask.to(device), autocast)
    parts = {"loss_c2i": out.caption_to_image, "loss_i2c": out.image_to_caption, "accuracy": out.accuracy,
             "scale": out.scale, "pairs_kept": out.keep.float().mean(),
             "regions": regions.present.float().sum(1).mean()}
    return out.loss, parts


# ------------------------------------------------------------------------------------- loop
def run(config_path: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool | str = False, overwrite: bool = False) -> dict:
    """Train with the YAML config at ``config_path`` plus ``key=value`` overrides.

    resume: False (fresh), True (continue from ``out_dir/checkpoints/last.pt``), or a checkpoint path;
    overwrite: replace an earlier run in ``out_dir``. Returns the run's figures.
    """
    cfg = load_config(GroupingClipConfig, config_path, overrides)
    check_config(cfg)
    with distributed_session(cfg.device) as info:
        return train(cfg, info, resume, overwrite)


def train(cfg: GroupingClipConfig, info, resume: bool | str = False, overwrite: bool = False) -> dict:
    """The loop: batches of pairs, one optimiser step each, logs, checkpoints, evaluations."""
    seed_everything(cfg.seed + info.rank)
    run = Run(RECIPE, cfg, info, resume=resume, overwrite=overwrite, extra_outputs=("nouns.txt", WEIGHTS))
    if info.is_main and cfg.synthetic is not None:
        cfg.synthetic.ensure(cfg.data)
    vocab = build_nouns_for(cfg, run.out, info)  # its broadcast also waits for the synthetic world
    segmenter = build_segmenter(cfg, info.device)
    adaptation = RegionAdaptation(segmenter.regions.initial_region_tokens(cfg.grouping.num_regions),
                                  direction=cfg.loss.direction, init_temperature=cfg.loss.init_temperature)
    adaptation.to(info.device)
    optimizer = torch.optim.AdamW(param_groups(adaptation, cfg), lr=cfg.lr)
    scheduler = warmup_cosine_schedule(optimizer, cfg.iterations, cfg.warmup, cfg.min_lr_ratio)
    s = run.restore(model=adaptation, optimizer=optimizer, scheduler=scheduler)
    s.extra.setdefault("skipped", 0)
    run.start(cfg.iterations)
    if cfg.eval.dataset:
        run.save_protocol(cfg.eval.resolve(cfg.eval.dataset))
    student = wrap_ddp(adaptation, info)
    table = NounTable(segmenter.encoder.encode_text, cfg.loss.templates)
    for epoch, done, skipped, batch in batches(cfg, run):
        if s.iteration >= cfg.iterations:
            break
        loss, parts = train_step(student, segmenter, batch, table=table, vocab=vocab, cfg=cfg, device=info.device,
                                 precision=run.precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(adaptation.parameters(), cfg.grad_clip)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        s.iteration, s.epoch, s.batches_done, s.extra["skipped"] = s.iteration + 1, epoch, done, skipped
        run.step_done({"loss": loss.detach(), **parts}, {"lr": lr}, cfg.batch_size, cfg.iterations)
        if cfg.eval.every and cfg.eval.dataset and s.iteration % cfg.eval.every == 0:
            log_eval(run, segmenter, adaptation, cfg)
        if s.iteration % cfg.save_every == 0 and s.iteration < cfg.iterations:
            run.save(model=adaptation.state_dict(), optimizer=optimizer, scheduler=scheduler)
        if run.stop_requested():
            return run.stopped()
    return finish(run, segmenter, adaptation, cfg)


# ------------------------------------------------------------------------------- evaluation
def evaluate_grouping_clip(segmenter: GroupingClip, cfg: GroupingClipConfig, device, out_dir=None, dataset=None,
                           protocol=None, class_names=None):
    """Harness evaluation of ``segmenter`` on ``cfg.eval``'s dataset (or ``dataset``) under ``cfg.eval``'s
    protocol (or ``protocol``). Returns the :class:`~leafseg.eval.harness.EvalReport`."""
    from leafseg.data.datasets import build_dataset
    from leafseg.eval.harness import evaluate

    dataset = dataset or build_dataset(cfg.eval.dataset, cfg.eval.root, split=cfg.eval.split)
    protocol = protocol or cfg.eval.resolve(getattr(dataset, "name", None) or cfg.eval.dataset)
    return evaluate(segmenter, dataset, protocol, out_dir, progress=False, device=device, class_names=class_names,
                    method_name=RECIPE, config=config_dict(cfg))


def log_eval(run: Run, segmenter: GroupingClip, adaptation: RegionAdaptation, cfg: GroupingClipConfig) -> dict:
    """Evaluate with the current tokens; one row of metrics.csv."""
    segmenter.tokens = adaptation.tokens.detach().clone()
    report = evaluate_grouping_clip(segmenter, cfg, run.info.device,
                                    out_dir=run.out / "eval" if run.info.is_main else None)
    row = {"iteration": run.state.iteration, "miou": report.miou, "acc": report.acc,
           "iou": report.metrics.get("iou") or list(report.metrics["per_class_iou"].values())}
    run.log_eval(row)
    return row


def finish(run: Run, segmenter: GroupingClip, adaptation: RegionAdaptation, cfg: GroupingClipConfig) -> dict:
    """Exported weights (``final.safetensors``: the tokens, the temperature, the config), last evaluation,
    ``results.json``."""
    if run.info.is_main:
        export_weights(run.out / WEIGHTS, adaptation.state_dict(), recipe=RECIPE, config=config_dict(cfg))
    last_eval = log_eval(run, segmenter, adaptation, cfg) if cfg.eval.dataset else {}
    train_log = run.train_rows()
    result = {"iterations": run.state.iteration, "skipped": run.state.extra["skipped"], "out_dir": str(run.out),
              "weights": str(run.out / WEIGHTS), "miou": last_eval.get("miou"),
              "final_train": train_log[-1] if train_log else {}, "weights_sha256": state_digest(adaptation),
              "train_log": train_log}
    return run.finish(result)


def load_segmenter(exported: dict, device: str) -> GroupingClip:
    """Exported weights as the ``grouping_clip`` harness method: the config's CLIP and grouping encoder with
    the trained tokens (class names are given at ``prepare``)."""
    cfg = load_config(GroupingClipConfig, None, exported["config"])
    if "tokens" not in exported["model"]:
        raise ConfigError("these grouping_clip weights hold no region tokens")
    return build_segmenter(cfg, torch.device(device), tokens=exported["model"]["tokens"].float())
