"""The settings every recipe shares: how a run is executed (:class:`RunSettings`, flat keys, the same in
every recipe) and the synthetic world a run may write (:class:`SyntheticSpec`). A recipe's config dataclass
extends ``RunSettings``; its ``eval`` section is a :class:`leafseg.eval.settings.EvalSettings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from leafseg.errors import ConfigError


@dataclass
class RunSettings:
    """How a run executes: device, precision, seed, output folder, checkpoints and logs."""

    device: str = "auto"                     # auto (CUDA if available) | cpu | cuda | cuda:N
    amp: Literal["auto", "bf16", "off"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    deterministic: bool | Literal["auto"] = "auto"  # auto: on for CPU
    seed: int = 0
    out_dir: str = "runs/run"
    save_every: int = 1000                   # iterations between checkpoints
    stop_after: int = 0                      # stop abruptly after this iteration, as if killed (tests)
    log_every: int = 20                      # iterations between rows of train_log.csv
    progress: bool = True                    # a progress bar on the main process
    tensorboard: bool = False                # also write TensorBoard scalars (needs the tensorboard package)
    echo: bool = True                        # print a line per evaluation (its mIoU) on the main process
    threads: int = 0                         # CPU threads of torch (0: torch's default); pinned, figures repeat

    def __post_init__(self):
        for name in ("save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        if self.stop_after < 0:
            raise ConfigError(f"stop_after must be >= 0, got {self.stop_after}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class SyntheticSpec:
    """A synthetic world a run writes to its data folder on first use (``leafseg.data.synthetic``):
    ``train`` and ``val`` scenes of ``size`` pixels from world ``seed``."""

    train: int
    val: int = 0
    size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.train < 1 or self.val < 0 or self.size < 16:
            raise ConfigError(f"synthetic: need train >= 1, val >= 0 and size >= 16, got {self}")

    def ensure(self, root) -> None:
        """Write the world to ``root`` unless a world with at least these scene counts is there."""
        from pathlib import Path

        from leafseg.data.synthetic import SyntheticWorld
        from leafseg.data.synthetic_layout import load_synthetic

        root = Path(root)
        if (root / "classes.json").exists():
            layout = load_synthetic(root)
            if len(layout.split("train")) >= self.train and len(layout.split("val")) >= self.val:
                return
        world = SyntheticWorld(seed=self.seed, size=self.size)
        world.write(root, self.train, "train")
        if self.val:
            world.write(root, self.val, "val")
