"""Seeding, reproducible mode, and capturing / restoring every random number generator.

``rng_states()`` returns plain containers of tensors and ints (python's ``random``, numpy's
global generator, torch CPU and every CUDA device), so a checkpoint holding them loads with
``torch.load(weights_only=True)``; ``set_rng_states`` puts them back.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator, torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_reproducible(enabled: bool) -> None:
    """Deterministic algorithms on (or off): ``torch.use_deterministic_algorithms``, cuDNN
    deterministic without benchmarking, and the cuBLAS workspace setting it needs. Fresh memory
    is not NaN-filled (a debugging aid of deterministic mode that costs ~10% on small models)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.utils.deterministic.fill_uninitialized_memory = not enabled
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def rng_states() -> dict:
    """The state of every generator: python (version, tensor of 625 ints, gauss), numpy
    (MT19937 keys as a tensor, position, gauss), torch CPU and CUDA (byte tensors)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Restore generators captured by :func:`rng_states`."""
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = states["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
