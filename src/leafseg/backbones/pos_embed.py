"""Position-embedding interpolation: each author's rule, and the Hugging Face one.

A ViT learns one position embedding per patch of its native M x M grid, plus one for the class
token. For another patch grid h x w (rows x columns) the M x M table is resampled bicubically
(``align_corners=False``, PyTorch's default) and the class embedding is kept. The authors' code and
transformers resample differently, so features at non-native sizes differ (about 5e-2 on DINOv2-S
at 224 or 224x336). The rules, with ``table`` the (1, C, M, M) patch embeddings:

"dino"        DINO v1 (``vision_transformer.py``, ``interpolate_pos_encoding``), in the table's dtype:
              ``F.interpolate(table, scale_factor=((h + 0.1) / M, (w + 0.1) / M), mode="bicubic")``.
              The output is h x w (floor of M * scale); the scale itself, not h / M, maps output
              to input coordinates, so the 0.1 shifts every sample slightly. The authors' code
              calls the rows ``w`` and the columns ``h`` (``B, nc, w, h = x.shape``): the first
              factor is the row factor. The SCLIP, ClearCLIP and NACLIP code applies this rule to
              CLIP too.
"dinov2"      DINOv2 without registers (hub models: ``interpolate_offset=0.1``,
              ``interpolate_antialias=False``): the "dino" call computed in float32, cast back.
"dinov2_reg"  DINOv2 with registers (hub models: ``interpolate_offset=0``,
              ``interpolate_antialias=True``): ``F.interpolate(table.float(), size=(h, w),
              mode="bicubic", antialias=True)``, cast back.
"hf"          what the transformers embedding module does (5.24): ``size=(h, w)``, bicubic, no
              antialias for ViTModel (DINO), Dinov2Model (in float32) and CLIPModel; antialias for
              Dinov2WithRegistersModel, which is then the same as "dinov2_reg".

Every rule returns the table unchanged when (h, w) == (M, M), as both the authors' code and
transformers do, so features at the native size are the same under every rule.

The user-facing option ``pos_interpolation`` of a backbone takes "authors" (the rule of the
checkpoint's authors, ``BackboneSpec.pos_rule``), "hf" or "dino" (the DINO v1 rule on any
backbone). OpenAI's CLIP code never interpolates, so CLIP has no "authors" rule; its default is
"hf" and "dino" gives the SCLIP-style rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leafseg.errors import ConfigError

RULES = ("dino", "dinov2", "dinov2_reg", "hf")
OPTIONS = ("authors", "hf", "dino")
OFFSET = 0.1  # the authors' "small number to avoid floating point error in the interpolation"


def resolve_rule(option: str | None, authors_rule: str, name: str) -> str:
    """The interpolation rule for ``option`` on a backbone whose authors use ``authors_rule``.

    option: None (the backbone's default: "authors" when the authors have a rule, else "hf"),
        "authors", "hf" or "dino". authors_rule: one of ``RULES`` or "" (none, as for CLIP).
    Raises ConfigError for an unknown option, or "authors" on a backbone without an authors' rule.
    """
    if option is None:
        return authors_rule or "hf"
    if option not in OPTIONS:
        raise ConfigError(f"{name}: pos_interpolation must be one of {', '.join(OPTIONS)}; got {option!r}")
    if option == "authors":
        if not authors_rule:
            raise ConfigError(f"{name}: the authors' code does not interpolate position embeddings, so there is no "
                              "'authors' rule; use 'hf' (the default: bicubic to the target size) or 'dino' "
                              "(bicubic by the scale factor (n + 0.1) / M, as in the SCLIP / ClearCLIP / NACLIP code)")
        return authors_rule
    return option


def interpolate_table(pos: torch.Tensor, grid: tuple[int, int], rule: str) -> torch.Tensor:
    """pos (1, 1 + M*M, C) [class, patches row-major] -> (1, 1 + h*w, C) for the patch grid (h, w).

    rule: "dino", "dinov2" or "dinov2_reg" (see the module docstring; "hf" is left to the
    transformers module). Returns ``pos`` itself when (h, w) == (M, M). Gradients flow.
    """
    h, w = int(grid[0]), int(grid[1])
    n = pos.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embeddings of {n} patches do not form a square grid")
    if (h, w) == (m, m):
        return pos
    dim = pos.shape[-1]
    table = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if rule == "dino":
        out = F.interpolate(table, scale_factor=((h + OFFSET) / m, (w + OFFSET) / m), mode="bicubic")
    elif rule == "dinov2":
        out = F.interpolate(table.float(), scale_factor=((h + OFFSET) / m, (w + OFFSET) / m), mode="bicubic",
                            antialias=False).to(pos.dtype)
    elif rule == "dinov2_reg":
        out = F.interpolate(table.float(), size=(h, w), mode="bicubic", antialias=True).to(pos.dtype)
    else:
        raise ValueError(f"unknown position-embedding rule {rule!r}; expected one of {RULES[:-1]}")
    if tuple(out.shape[-2:]) != (h, w):
        raise RuntimeError(f"interpolating {m}x{m} position embeddings gave {tuple(out.shape[-2:])}, not {(h, w)}")
    return torch.cat([pos[:, :1], out.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)
