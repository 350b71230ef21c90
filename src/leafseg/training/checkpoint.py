"""Atomic, resumable checkpoints in one layout for every recipe, and exported weights.

A checkpoint is a ``torch.save`` dictionary of tensors, numbers, strings and plain containers only, so
it is read back with ``torch.load(weights_only=True)``: nothing is unpickled. It is written to a
temporary file in the same folder, flushed and renamed over the target, so a run killed while saving
leaves the previous checkpoint intact.

The training checkpoint (``out_dir/checkpoints/last.pt``)::

    format       1
    recipe       "unimatch_v2" | "sseg" | "sseg_plus" | ...
    leafseg      the version that wrote it
    config       the resolved config (plain data)
    state        the RunState: iteration, epoch, batches_done, best metrics, history, extra
    model        the model's state dict (a recipe may leave out frozen parts it rebuilds)
    ema          the EMA teacher's state dict, or absent
    optimizer    the optimizer's state dict, or absent (a run without one: a federated server)
    scheduler    the lr scheduler's state dict, or absent
    rng          every rank's generators (python, numpy, torch, CUDA), in rank order
    world_size   the number of processes that wrote it (RNG is restored only on the same number)
    extra        recipe data needed to rebuild the model (a tokenizer, class names), or absent

Exported weights (what ``leafseg eval model`` and ``leafseg segment`` load) carry the recipe's name and
its resolved config: a ``.pt`` dictionary with ``recipe``, ``config``, ``model`` (and ``extra``), or a
``.safetensors`` file whose metadata holds ``recipe`` and ``config`` (JSON) and, as Hugging Face's own
files do, ``format: pt`` (so a Hugging Face folder's ``model.safetensors`` can be exported weights too).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from leafseg.errors import ConfigError
from leafseg.files import atomic_write

FORMAT = 1


@dataclass
class RunState:
    """Where a run is: the loop position, the best metrics so far and the evaluation history."""

    iteration: int = 0
    epoch: int = 0
    batches_done: int = 0                    # batches of ``epoch`` already consumed
    best: dict = field(default_factory=dict)     # e.g. {"ema_miou": 0.41, "epoch": 7}
    history: list = field(default_factory=list)  # one row per evaluation
    extra: dict = field(default_factory=dict)    # recipe counters (e.g. skipped samples)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunState:
        return cls(**values)


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
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"cannot read checkpoint {path}: {type(err).__name__}: {first}") from err


def training_checkpoint(*, recipe: str, state: RunState, config: dict, model: dict, optimizer=None, scheduler=None,
                        ema: dict | None = None, extra: dict | None = None) -> dict:
    """The checkpoint dictionary of the layout above (``optimizer`` None: a run without one). Every rank
    must call it (it gathers RNG states)."""
    from leafseg import __version__
    from leafseg.training.distributed import all_gather_objects, world_size
    from leafseg.training.seeding import rng_states

    ckpt = {"format": FORMAT, "recipe": recipe, "leafseg": __version__, "config": config,
            "state": state.to_dict(), "model": model, "rng": all_gather_objects(rng_states()),
            "world_size": world_size()}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    if ema is not None:
        ckpt["ema"] = ema
    if extra is not None:
        ckpt["extra"] = extra
    return ckpt


def read_training_checkpoint(path: str | os.PathLike, recipe: str, map_location="cpu") -> dict:
    """A training checkpoint of ``recipe`` (an error names the file when it is not one)."""
    ckpt = load_checkpoint(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state" not in ckpt:
        raise ConfigError(f"{path} is not a leafseg training checkpoint (format {FORMAT})")
    if ckpt.get("recipe") != recipe:
        raise ConfigError(f"{path} is a checkpoint of recipe {ckpt.get('recipe')!r}, not {recipe!r}")
    return ckpt


def restore_training(ckpt: dict, *, optimizer=None, scheduler=None, ema=None, rank: int = 0,
                     world_size: int = 1) -> RunState:
    """Put a checkpoint's optimizer, scheduler, EMA and RNG states back (the model is the recipe's to
    load); returns its RunState. RNG states are restored when the process count is the same."""
    from leafseg.training.seeding import set_rng_states

    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    if ckpt["world_size"] == world_size:
        rng = dict(ckpt["rng"][rank])
        rng["torch"], rng["cuda"] = rng["torch"].cpu(), [s.cpu() for s in rng.get("cuda", [])]
        set_rng_states(rng)
    return RunState.from_dict(ckpt["state"])


def export_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], *, recipe: str, config: dict,
                   extra: dict | None = None) -> Path:
    """Model weights for inference with the recipe's name and config: ``.safetensors`` (metadata
    ``format: pt``, ``recipe``, ``config`` and ``extra`` as JSON) or ``.pt`` (a dictionary); atomic."""
    from leafseg import __version__

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        meta = {"format": "pt", "recipe": recipe, "leafseg": __version__, "config": json.dumps(config),
                "extra": json.dumps(extra or {})}
        data = save(tensors, metadata=meta)
        return atomic_write(path, lambda f: f.write(data), fsync=True)
    payload = {"recipe": recipe, "leafseg": __version__, "config": config, "model": tensors, "extra": extra or {}}
    return save_checkpoint(payload, path)


def read_exported(path: str | os.PathLike) -> dict:
    """``{"recipe", "config", "model", "extra"}`` of exported weights (``.safetensors`` or a ``.pt``
    dictionary; a training checkpoint works too). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"cannot read {path}: {type(err).__name__}: {err}") from err
        if "recipe" not in meta:
            raise ConfigError(f"{path} carries no recipe name: weights exported by leafseg name their recipe")
        return {"recipe": meta["recipe"], "config": json.loads(meta.get("config", "{}")), "model": tensors,
                "extra": json.loads(meta.get("extra", "{}"))}
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "recipe" not in ckpt or "model" not in ckpt:
        raise ConfigError(f"{path} carries no recipe name: weights exported by leafseg name their recipe")
    return {"recipe": ckpt["recipe"], "config": ckpt.get("config", {}), "model": ckpt["model"],
            "extra": ckpt.get("extra") or {}}


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names and bytes): equal on every rank of a healthy DDP run."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
