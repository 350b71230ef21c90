"""Weak-to-strong consistency: the thresholded pseudo-label loss and Complementary Dropout.

UniMatch V2's unlabelled loss: cross-entropy of the student's strong-view logits against the
teacher's weak-view pseudo-labels, summed over pixels whose teacher confidence reaches the
threshold (0.95) and that are not padding, divided by the number of non-padding pixels (so
unconfident pixels count as zero, not as absent).

Complementary Dropout: two strong views of the same image go through the student together;
one Bernoulli(0.5) mask over the feature channels is drawn per image pair, the first view is
scaled by ``2 * mask`` and the second by ``2 * (1 - mask)``, and a random half of the pairs
is left undropped (scale 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pseudo_labels(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (B, K, H, W) -> (labels (B, H, W) int64, confidence (B, H, W) float32)."""
    conf, labels = logits.float().softmax(dim=1).max(dim=1)
    return labels, conf


def confident_pixel_loss(logits: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor, ignore: torch.Tensor,
                         threshold: float = 0.95, ignore_index: int = 255) -> torch.Tensor:
    """Thresholded pseudo-label cross-entropy, normalised by the non-ignored pixels.

    logits: (B, K, H, W) student; labels: (B, H, W) int64 pseudo-labels; conf: (B, H, W)
    teacher confidence; ignore: (B, H, W) with ``ignore_index`` on padding. Returns a scalar:
    sum over {conf >= threshold and not ignored} of CE, divided by #{not ignored} (at least 1).
    """
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    valid = ignore != ignore_index
    keep = (conf >= threshold) & valid
    return (ce * keep).sum() / valid.sum().clamp_min(1)


def complementary_dropout_masks(num_pairs: int, channels: int, *, undropped_fraction: float = 0.5,
                                device: torch.device | str | None = None,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """Channel scales for ``num_pairs`` pairs of views: (2 * num_pairs, channels) float32.

    Rows 0..P-1 scale the first views, rows P..2P-1 the second views (the order of
    ``torch.cat((s1, s2))``). Row i and row P+i are complementary: ``2 * m`` and
    ``2 * (1 - m)`` with ``m ~ Bernoulli(0.5)`` per channel, except for
    ``int(P * undropped_fraction)`` randomly chosen pairs whose rows are all ones.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    first = (torch.rand(num_pairs, channels, device=device, generator=generator) < 0.5).float() * 2.0
    second = 2.0 - first
    kept = int(num_pairs * undropped_fraction)
    if kept > 0:
        chosen = torch.randperm(num_pairs, device=device, generator=generator)[:kept]
        first[chosen] = 1.0
        second[chosen] = 1.0
    return torch.cat((first, second))
