"""What every run records beside its outputs: seed, git commit, resolved config, environment, metrics."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from leafseg.files import atomic_write_text


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the leafseg source tree (with ``+dirty`` when it has local changes), or None."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def environment(device: str | torch.device | None = None) -> dict:
    """Versions and hardware: python, torch, platform, threads, and the device name."""
    from leafseg import __version__

    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {
        "leafseg": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": name,
        "threads": torch.get_num_threads(),
    }


def run_record(*, seed: int | None, config: dict, device=None, command: list[str] | None = None) -> dict:
    """The dictionary saved as ``run.json`` next to a run's outputs."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else sys.argv,
        "seed": seed,
        "git_commit": git_commit(),
        "config": config,
        "environment": environment(device),
    }


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file in the same folder, then rename)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
