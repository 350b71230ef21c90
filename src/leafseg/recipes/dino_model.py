"""DINO's model pieces: the student and teacher (a ViT and a projection head each), the EMA update and the
schedules, the k-means probe that scores a teacher, the exported encoder folder and loading exported weights.

    model = build_model(cfg, device)                 # DinoModel: student, teacher (a copy), loss with its centre
    logits = model.student(views)                    # (V, B, K) over a list of V view batches
    ema_update(model.teacher, model.student, m)      # teacher <- m teacher + (1 - m) student
    export_encoder(model.teacher.encoder, folder)    # a folder build_backbone("dino_vits8", weights=folder) reads
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leafseg.errors import ConfigError
from leafseg.eval.segmenter import Segmenter
from leafseg.heads.dino import DinoHead
from leafseg.heads.probes import cosine_assignment
from leafseg.losses.dino import DinoLoss
from leafseg.recipes.dino_config import BackboneSettings, DinoConfig

__all__ = ["Branch", "DinoModel", "FeatureClusters", "build_encoder", "build_model", "cosine_schedule",
           "ema_update", "export_encoder", "load_segmenter", "patch_features"]


def build_encoder(backbone: BackboneSettings, device) -> nn.Module:
    """The ViT of ``backbone`` on ``device``, trainable. Random weights are drawn on the CPU from
    ``backbone.seed`` (the global generators untouched), exactly as a frozen random encoder of the same name,
    architecture and seed is drawn elsewhere in leafseg."""
    from leafseg.backbones import build_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbone.seed)
        encoder = build_backbone(backbone.name, weights=backbone.weights, device="cpu",
                                 arch_overrides=backbone.arch_overrides or None)
    return encoder.to(device)


class Branch(nn.Module):
    """A ViT and its projection head. forward(views: list of (B, 3, S_v, S_v)) -> logits (V, B, K): the head on
    each view's class token (after the final LayerNorm); views of one size go through the ViT together."""

    def __init__(self, encoder: nn.Module, head: DinoHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        out: list[Tensor | None] = [None] * len(views)
        sizes = sorted({tuple(v.shape[-2:]) for v in views})
        for size in sizes:
            which = [i for i, v in enumerate(views) if tuple(v.shape[-2:]) == size]
            cls = self.encoder.features(torch.cat([views[i] for i in which]), layers=(-1,)).cls[0]
            for i, logits in zip(which, self.head(cls).chunk(len(which)), strict=True):
                out[i] = logits
        return torch.stack(out)


class DinoModel(nn.Module):
    """The student (trained), the teacher (an EMA of the student, no gradients) and the loss (its centre)."""

    def __init__(self, student: Branch, loss: DinoLoss):
        super().__init__()
        self.student, self.loss = student, loss
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self


def build_model(cfg: DinoConfig, device) -> DinoModel:
    """Student (the config's ViT and head), teacher (the same weights), loss; on ``device``."""
    encoder = build_encoder(cfg.backbone, device)
    h = cfg.head
    head = DinoHead(encoder.embed_dim, h.out_dim, hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim,
                    layers=h.layers)
    loss = DinoLoss(h.out_dim, student_temp=cfg.distill.student_temp, center_momentum=cfg.distill.center_momentum)
    return DinoModel(Branch(encoder, head), loss).to(device).train()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Every teacher parameter becomes ``momentum * teacher + (1 - momentum) * student`` (same names)."""
    src = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        p.mul_(momentum).add_(src[name].detach().to(p.dtype), alpha=1.0 - momentum)


def cosine_schedule(start: float, end: float, step: int, total: int) -> float:
    """``end + (start - end) * (1 + cos(pi * step / total)) / 2``: start at step 0, end at step ``total``."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def teacher_temperature(cfg: DinoConfig, step: int) -> float:
    """Linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up, then constant."""
    d = cfg.distill
    if step >= d.warmup_teacher_iterations:
        return d.teacher_temp
    return d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * step / d.warmup_teacher_iterations


def param_groups(module: nn.Module) -> list[dict]:
    """[decayed: matrices, no decay: biases and norms (1-d)] of the trainable parameters."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "decay": True}, {"params": rest, "decay": False, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------- the k-means probe
@torch.no_grad()
def patch_features(encoder: nn.Module, images: Tensor, layer: int) -> Tensor:
    """images (B, 3, H, W) in [0, 1] -> patch features (B, C, h, w), float32, no gradient."""
    return encoder.features(images, layers=(layer,)).maps[0].float()


class FeatureClusters(Segmenter):
    """Cluster ids for the harness: the encoder's patch features resized (bilinear) to the image, each pixel
    given the centroid of highest cosine. images (B, 3, H, W) -> (B, H, W) int64 in [0, K). centroids: (K, C)."""

    outputs = "clusters"

    def __init__(self, encoder: nn.Module, centroids: Tensor, *, layer: int = -1,
                 class_names: Sequence[str] | None = None):
        super().__init__()
        self.encoder, self.layer = encoder, layer
        self.register_buffer("centroids", centroids.detach().clone().float())
        self.num_clusters = int(centroids.shape[0])
        self.class_names = list(class_names) if class_names is not None else None

    def forward(self, images: Tensor) -> Tensor:
        feats = F.interpolate(patch_features(self.encoder, images, self.layer), size=images.shape[-2:],
                              mode="bilinear", align_corners=False)
        return cosine_assignment(feats, self.centroids)[1]


# ------------------------------------------------------------------------------- export and loading
def export_encoder(encoder: nn.Module, folder: str | Path) -> Path:
    """The encoder's Hugging Face model as a folder (config.json + model.safetensors), written beside and
    renamed into place, so ``build_backbone(name, weights=folder)`` (``model.weights=FOLDER``) loads it."""
    import shutil

    from leafseg.backbones.loading import quiet_progress

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_progress():
        encoder.model.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_segmenter(exported: dict, device: str) -> FeatureClusters:
    """Exported weights (the teacher's ViT and the k-means centroids of its features) as the harness method."""
    from leafseg.config import load_config

    cfg = load_config(DinoConfig, None, exported["config"])
    state = exported["model"]
    if "centroids" not in state:
        raise ConfigError("these dino weights hold no k-means centroids (centroids)")
    encoder = build_encoder(cfg.backbone, torch.device(device))  # the run's start, then the trained weights
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    return FeatureClusters(encoder.eval(), state["centroids"].to(device), layer=cfg.backbone.layer,
                           class_names=exported["extra"].get("classes")).eval()
