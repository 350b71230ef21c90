"""One precision resolver for every recipe: bf16 autocast on CUDA, fp32 on CPU (unless asked), and the
deterministic-algorithms switch (on for CPU runs unless asked)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """``dtype``: the autocast dtype (None: fp32, no autocast); ``deterministic``: reproducible kernels."""

    device: torch.device
    dtype: torch.dtype | None
    deterministic: bool

    def autocast(self):
        """A context running its block under autocast in ``dtype`` (a no-op without one)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def resolve_precision(amp: str, deterministic: bool | str, device: torch.device) -> Precision:
    """amp: "auto" (bf16 on CUDA, fp32 elsewhere) | "bf16" | "off"; deterministic: a bool or "auto"
    (on for CPU)."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be auto, bf16 or off, got {amp!r}")
    dtype = torch.bfloat16 if amp == "bf16" or (amp == "auto" and device.type == "cuda") else None
    det = deterministic if isinstance(deterministic, bool) else device.type == "cpu"
    return Precision(device, dtype, det)
