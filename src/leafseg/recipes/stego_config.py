"""STEGO's run configuration: every setting, its default (the authors' COCO-Stuff-27 ViT-B/8 training where
they state one; docs/stego.md names the sources) and the checks that refuse settings which cannot work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from leafseg.errors import ConfigError
from leafseg.eval.settings import EvalSettings
from leafseg.losses.stego import PRESETS
from leafseg.training.settings import RunSettings, SyntheticSpec

LOSS_VALUES = ("self_weight", "self_shift", "knn_weight", "knn_shift", "random_weight", "random_shift")


@dataclass
class BackboneSettings:
    """The frozen encoder: never trained, its features both the head's input and the correlation target."""

    name: str = "dino_vitb8"                 # a registry name (dino_vits8, dino_vitb8, dinov2_vitb14, ...)
    weights: str | None = None               # null: the local cache; a folder or file; "random": drawn from seed
    arch_overrides: dict = field(default_factory=dict)
    layer: int = -1                          # the block whose tokens are the features (final LayerNorm on -1)
    seed: int = 0                            # random weights: the draw (the same encoder for training, k-NN, loading)


@dataclass
class HeadSettings:
    """The segmentation head (:class:`leafseg.heads.stego.StegoHead`)."""

    code_dim: int = 70
    nonlinear: bool = True                   # the conv-ReLU-conv branch beside the linear one
    dropout: float = 0.1                     # Dropout2d on the features (and on the correlation target)

    def __post_init__(self):
        if self.code_dim < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head: need code_dim >= 1 and dropout in [0, 1), got {self.code_dim}, {self.dropout}")


@dataclass
class LossSettings:
    """The correspondence loss (:class:`leafseg.losses.stego.CorrespondenceLoss`): a preset's six values, any of
    which a key here replaces (null: the preset's)."""

    preset: str | None = "cocostuff27"       # leafseg.losses.stego.PRESETS; null: give all six values
    self_weight: float | None = None
    self_shift: float | None = None
    knn_weight: float | None = None
    knn_shift: float | None = None
    random_weight: float | None = None
    random_shift: float | None = None
    feature_samples: int = 11                # S: an S x S array of random points per image
    negatives: int = 5                       # random-partner draws per step
    centering: bool = True                   # STEGO's "pointwise"
    zero_clamp: bool = True

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            from leafseg.config import suggest

            raise ConfigError(f"loss.preset {self.preset!r} is unknown{suggest(self.preset, PRESETS)}; presets: "
                              f"{', '.join(PRESETS)} (or null with all six values)")
        if self.preset is None and any(getattr(self, k) is None for k in LOSS_VALUES):
            missing = [k for k in LOSS_VALUES if getattr(self, k) is None]
            raise ConfigError(f"loss.preset is null: set {', '.join('loss.' + k for k in missing)}")
        if self.feature_samples < 1 or self.negatives < 0:
            raise ConfigError(f"loss: need feature_samples >= 1 and negatives >= 0, got {self.feature_samples} "
                              f"and {self.negatives}")

    def values(self) -> dict[str, float]:
        """The resolved lambda and b of the three pairings."""
        base = PRESETS[self.preset].values() if self.preset is not None else {}
        return {k: float(getattr(self, k)) if getattr(self, k) is not None else base[k] for k in LOSS_VALUES}


@dataclass
class KnnSettings:
    """The nearest-neighbour table of the training views (:mod:`leafseg.grouping.knn`)."""

    k: int = 7                               # a neighbour is drawn from the k nearest
    cache_dir: str | None = None             # null: <data_root>/knn
    batch_size: int = 64                     # images per forward while pooling features

    def __post_init__(self):
        if self.k < 1 or self.batch_size < 1:
            raise ConfigError(f"knn: need k >= 1 and batch_size >= 1, got {self.k} and {self.batch_size}")


@dataclass
class ProbeSettings:
    """The cluster probe (the prediction) and the linear probe (an evaluation device fed labels)."""

    clusters: int | None = None              # K centroids; null: the number of classes of the evaluation set
    lr: float = 5e-3                         # Adam, both probes
    linear: bool = True                      # train the linear probe on detached codes with the training labels


@dataclass
class StegoConfig(RunSettings):
    """Every setting of a run; defaults follow the authors' COCO-Stuff-27 training (docs/stego.md)."""

    # data: a leafseg dataset; the training split is read as images (its masks only feed the linear probe)
    dataset: str = "coco_stuff27"
    data_root: str = "data/cocostuff"
    dataset_options: dict = field(default_factory=dict)
    train_split: str = "train"
    synthetic: SyntheticSpec | None = None   # dataset "synthetic": the world to write to data_root on first use
    on_error: Literal["stop", "skip"] = "stop"
    image_size: int = 224                    # training views: short side resized, centre-cropped square
    five_crop: bool = True                   # five views per image (corners + centre at crop_ratio)
    crop_ratio: float = 0.5
    num_workers: int = 4
    # model
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    knn: KnnSettings = field(default_factory=KnnSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    # optimisation (Adam, constant rates)
    batch_size: int = 16                     # per process
    iterations: int = 5000
    lr: float = 5e-4                         # the head
    # evaluation: the harness with the cluster probe's ids, Hungarian-matched (preset stego); eval.dataset
    # null: `dataset` at `data_root`, split eval.split; eval.every: iterations between evaluations (0: at the end)
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(preset="stego"))
    out_dir: str = "runs/stego"


def check_config(cfg: StegoConfig) -> None:
    """Refuse settings that cannot work, before any work is done (types and choices are checked on load)."""
    from leafseg.backbones.build import check_arch_overrides

    check_arch_overrides(cfg.backbone.name, cfg.backbone.arch_overrides, "backbone.arch_overrides")
    if cfg.batch_size < 2 and cfg.loss.negatives:
        raise ConfigError(f"batch_size must be at least 2 for the random pairs (loss.negatives > 0), got "
                          f"{cfg.batch_size}")
    if cfg.iterations < 1 or cfg.image_size < 8:
        raise ConfigError(f"need iterations >= 1 and image_size >= 8, got {cfg.iterations} and {cfg.image_size}")
    if not 0.0 < cfg.crop_ratio <= 1.0:
        raise ConfigError(f"crop_ratio must be in (0, 1], got {cfg.crop_ratio}")
    if cfg.probes.clusters is not None and cfg.probes.clusters < 1:
        raise ConfigError(f"probes.clusters must be at least 1 (or null), got {cfg.probes.clusters}")
    if cfg.dataset == "synthetic" and cfg.synthetic is None and not Path(cfg.data_root, "classes.json").exists():
        raise ConfigError(f"data_root={cfg.data_root} holds no synthetic world; set synthetic={{train: N, val: M}} "
                          "to write one there, or point data_root at a folder written by `leafseg synth`")
