"""Atomic, resumable checkpoints.

A checkpoint is a ``torch.save`` dictionary of tensors, numbers, strings and plain containers
only, so it is read back with ``torch.load(weights_only=True)``: nothing is unpickled. It is
written to a temporary file in the same folder and renamed over the target, so a run killed
while saving leaves the previous checkpoint intact.

What a training recipe stores (see ``leafseg.recipes.unimatch_v2``): model, EMA, optimizer and
scheduler state dicts, ``rng_states()``, the iteration, the data position (sampler epoch and
batches already consumed in it), best metrics and the resolved config.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from leafseg.files import atomic_write


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename); returns ``path``."""
    return atomic_write(path, lambda f: torch.save(state, f), fsync=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader failure becomes one clear message
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def save_weights(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write model weights as safetensors, atomically (``metadata`` values become strings)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda f: f.write(data), fsync=True)


def gather_rng_states() -> list[dict]:
    """Every rank's ``rng_states()``, in rank order (one entry without a process group)."""
    import torch.distributed as dist

    from leafseg.training.seeding import rng_states

    if not (dist.is_available() and dist.is_initialized()):
        return [rng_states()]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, rng_states())
    return out


def training_state(*, model, ema, optimizer, scheduler, loop: dict, config: dict) -> dict:
    """A resumable checkpoint: state dicts, every rank's RNG states, the loop state (iteration,
    data position, best metrics, ...) and the config. Every rank must call it (RNG gathering)."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": gather_rng_states(), "loop": dict(loop),
            "world_size": world, "config": config}


def restore_training_state(path: str | os.PathLike, *, model, ema, optimizer, scheduler, rank: int = 0,
                           world_size: int = 1, map_location="cpu") -> dict:
    """Load :func:`training_state` from ``path`` into the objects; returns the loop state. RNG
    states are restored when the run has the same number of processes (else they stay seeded)."""
    from leafseg.training.seeding import set_rng_states

    ckpt = load_checkpoint(path, map_location=map_location)
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["world_size"] == world_size:
        rng = ckpt["rng"][rank]
        set_rng_states({**rng, "torch": rng["torch"].cpu(), "cuda": [s.cpu() for s in rng.get("cuda", [])]})
    return dict(ckpt["loop"])


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names and bytes): equal on every rank of a healthy DDP run."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
