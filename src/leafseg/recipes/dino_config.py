"""DINO self-distillation pretraining: every setting, its default (the authors' released training defaults;
docs/dino.md names the sources) and the checks that refuse settings which cannot work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leafseg.errors import ConfigError
from leafseg.eval.settings import EvalSettings
from leafseg.training.settings import RunSettings, SyntheticSpec


@dataclass
class BackboneSettings:
    """The ViT trained (student) and averaged (teacher): a registry name, its architecture and its start."""

    name: str = "dino_vits8"                 # a DINO registry name (dino_vits8, dino_vits16, dino_vitb8, ...)
    weights: str = "random"                  # the start: "random" (drawn from seed) or a weights folder / file
    arch_overrides: dict = field(default_factory=dict)
    seed: int = 0                            # random start: the draw (the same draw as a frozen random encoder)
    layer: int = -1                          # the block whose patch tokens evaluation clusters (-1: the last)


@dataclass
class HeadSettings:
    """The projection head (:class:`leafseg.heads.dino.DinoHead`): MLP, bottleneck, prototypes."""

    out_dim: int = 65536                     # prototypes K
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    layers: int = 3

    def __post_init__(self):
        if min(self.out_dim, self.hidden_dim, self.bottleneck_dim, self.layers) < 1:
            raise ConfigError(f"head: every width and layers must be >= 1, got {self}")


@dataclass
class CropSettings:
    """Multi-crop (:class:`leafseg.data.multicrop.MultiCrop`)."""

    global_size: int = 224
    local_size: int = 96
    global_crops: int = 2
    local_crops: int = 8
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])  # brightness contrast saturation hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])   # first global, second global, local
    solarize_p: float = 0.2

    def __post_init__(self):
        for key in ("global_scale", "local_scale", "blur_sigma"):
            pair = getattr(self, key)
            if len(pair) != 2 or not 0 < pair[0] <= pair[1] or (key != "blur_sigma" and pair[1] > 1):
                raise ConfigError(f"crops.{key} must be two numbers 0 < low <= high (<= 1 for a scale), got {pair}")
        if len(self.jitter) != 4 or len(self.blur_p) != 3:
            raise ConfigError(f"crops.jitter needs 4 values and crops.blur_p 3, got {self.jitter}, {self.blur_p}")
        if self.global_crops < 2 or self.local_crops < 0:
            raise ConfigError(f"crops: need global_crops >= 2 (each is the other's target) and local_crops >= 0, "
                              f"got {self.global_crops} and {self.local_crops}")
        if min(self.global_size, self.local_size) < 1:
            raise ConfigError(f"crops: sizes must be positive, got {self.global_size} and {self.local_size}")


@dataclass
class DistillSettings:
    """Teacher and loss: temperatures, centring, the EMA momentum."""

    student_temp: float = 0.1
    teacher_temp: float = 0.04               # after the warm-up
    warmup_teacher_temp: float = 0.04        # linearly to teacher_temp over warmup_teacher_iterations
    warmup_teacher_iterations: int = 0
    center_momentum: float = 0.9
    momentum: float = 0.996                  # the teacher's EMA momentum, cosine-scheduled to 1
    freeze_prototypes: int = 0               # iterations during which the prototype layer does not learn

    def __post_init__(self):
        if min(self.student_temp, self.teacher_temp, self.warmup_teacher_temp) <= 0:
            raise ConfigError("distill: temperatures must be positive")
        if not 0 <= self.center_momentum < 1 or not 0 <= self.momentum <= 1:
            raise ConfigError(f"distill: need center_momentum in [0, 1) and momentum in [0, 1], got "
                              f"{self.center_momentum} and {self.momentum}")
        if self.warmup_teacher_iterations < 0 or self.freeze_prototypes < 0:
            raise ConfigError("distill: warmup_teacher_iterations and freeze_prototypes must be >= 0")


@dataclass
class ProbeSettings:
    """How a run scores its teacher: global k-means of the teacher's patch features over the training views
    (no label), each validation pixel given its nearest centroid by cosine, clusters matched to classes by the
    harness (Hungarian)."""

    clusters: int | None = None              # null: the number of classes of the evaluation set
    at_start: bool = True                    # also score the initial teacher (iteration 0) on a fresh run
    batch_size: int = 64                     # views per forward while collecting features


@dataclass
class DinoConfig(RunSettings):
    """Every setting of a DINO pretraining run; defaults: the authors' released training defaults (docs/dino.md)."""

    # data: a leafseg dataset whose images only are read (the masks are dropped before training starts)
    dataset: str = "folder"
    data_root: str = "data/images"
    dataset_options: dict = field(default_factory=dict)
    train_split: str = "train"
    synthetic: SyntheticSpec | None = None   # dataset "synthetic": the world to write to data_root on first use
    image_size: int = 256                    # the square view every image is cut to before multi-crop
    num_workers: int = 4
    # model
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    crops: CropSettings = field(default_factory=CropSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    # optimisation: AdamW, linear warm-up then cosine lr; weight decay cosine from weight_decay to
    # weight_decay_end (not on biases and norms); each parameter's gradient clipped to norm grad_clip
    batch_size: int = 64                     # per process
    iterations: int = 1000
    lr: float = 0.0005                       # the paper: 0.0005 x (total batch / 256)
    min_lr: float = 1e-6
    warmup: int = 100
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    grad_clip: float = 3.0                   # 0: off
    # evaluation of the teacher (probe) through the harness; eval.every: iterations between (0: at the end)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(preset="stego"))
    out_dir: str = "runs/dino"


def check_config(cfg: DinoConfig) -> None:
    """Refuse settings that cannot work, before any work is done (types and choices are checked on load)."""
    from leafseg.backbones.build import check_arch_overrides
    from leafseg.backbones.registry import get_spec

    check_arch_overrides(cfg.backbone.name, cfg.backbone.arch_overrides, "backbone.arch_overrides")
    if get_spec(cfg.backbone.name).family != "dino":
        raise ConfigError(f"backbone.name must be a DINO ViT (dino_vits8, dino_vitb16, ...), got {cfg.backbone.name}")
    if cfg.iterations < 1 or cfg.batch_size < 1 or cfg.image_size < 8:
        raise ConfigError(f"need iterations >= 1, batch_size >= 1 and image_size >= 8, got {cfg.iterations}, "
                          f"{cfg.batch_size} and {cfg.image_size}")
    if cfg.lr <= 0 or cfg.min_lr < 0 or cfg.min_lr > cfg.lr or cfg.warmup < 0:
        raise ConfigError(f"need lr > 0, 0 <= min_lr <= lr and warmup >= 0, got {cfg.lr}, {cfg.min_lr}, {cfg.warmup}")
    if cfg.weight_decay < 0 or cfg.weight_decay_end < 0 or cfg.grad_clip < 0:
        raise ConfigError("weight_decay, weight_decay_end and grad_clip must be >= 0")
    if cfg.probe.clusters is not None and cfg.probe.clusters < 1:
        raise ConfigError(f"probe.clusters must be at least 1 (or null), got {cfg.probe.clusters}")
    if cfg.probe.batch_size < 1:
        raise ConfigError(f"probe.batch_size must be at least 1, got {cfg.probe.batch_size}")
    if cfg.dataset == "synthetic" and cfg.synthetic is None and not Path(cfg.data_root, "classes.json").exists():
        raise ConfigError(f"data_root={cfg.data_root} holds no synthetic world; set synthetic={{train: N, val: M}} "
                          "to write one there, or point data_root at a folder written by `leafseg synth`")
