"""Background rules: how open-vocabulary methods predict the "background" class 0.

"Background" is not a visual concept a text prompt can describe, so each harness has its rule
(see :class:`leafseg.eval.protocol.Protocol`). With C the dataset's classes (class 0 background):

=========== ============================================ =========================================
rule        what the method is asked for                 label of a pixel
=========== ============================================ =========================================
none        all C class names (class 0 prompted as is)   argmax
threshold   the C-1 foreground names (GroupViT)          argmax + 1; 0 where max prob < threshold
constant    the C-1 foreground names (TCL)               argmax over [value, p_1, ..., p_{C-1}]
stuff       class 0 = the background words (SCLIP)      argmax; 0 where max prob < threshold
=========== ============================================ =========================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["apply_background", "prompt_classes"]

RULES = ("none", "threshold", "constant", "stuff")


def prompt_classes(
    classes: Sequence[str], has_background: bool, rule: str, bg_words: Sequence[str] = ()
) -> list[str | list[str]]:
    """The class entries a method is prepared with under ``rule``.

    classes: the dataset's C class names (entries may hold comma-separated synonyms).
    Returns C entries (rules "none" and "stuff", where class 0 becomes the list ``bg_words``)
    or C - 1 foreground entries ("threshold", "constant").
    """
    if rule not in RULES:
        raise ValueError(f"background rule must be one of {RULES}, got {rule!r}")
    if rule == "none":
        return list(classes)
    if not has_background:
        raise ValueError(f"background rule {rule!r} needs a dataset whose class 0 is background; this one has "
                         f"none (classes start {list(classes[:3])}). Use background=none.")
    if rule == "stuff":
        if not bg_words:
            raise ValueError("background rule 'stuff' needs a non-empty list of background words")
        return [list(bg_words), *classes[1:]]
    return list(classes[1:])


def apply_background(probs: Tensor, rule: str, threshold: float = 0.0, value: float = 0.5) -> Tensor:
    """Label maps from class probabilities under a background rule.

    Args:
        probs: (B, K, H, W) probabilities of the classes :func:`prompt_classes` returned
            (K = C for "none"/"stuff", K = C - 1 for "threshold"/"constant").
        rule: "none", "threshold", "constant" or "stuff".
        threshold: background below this maximum probability ("threshold", "stuff").
        value: the constant background score ("constant").

    Returns:
        (B, H, W) int64 labels in [0, C).
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (B, K, H, W), got shape {tuple(probs.shape)}")
    if rule not in RULES:
        raise ValueError(f"background rule must be one of {RULES}, got {rule!r}")
    if rule == "constant":
        background = probs.new_full((probs.shape[0], 1, *probs.shape[2:]), float(value))
        return torch.cat([background, probs], dim=1).argmax(1)  # ties go to background
    best, labels = probs.max(1)
    if rule == "none":
        return labels
    if rule == "threshold":
        labels = labels + 1
    return torch.where(best < threshold, torch.zeros_like(labels), labels)
