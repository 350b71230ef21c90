"""The one-way noun-region contrastive loss of region-level adaptation ("group, then recognise", §3.2).

A caption gives nouns (an offline parser, :mod:`leafseg.text.nouns`), each encoded as a prompted noun
embedding; an image gives region embeddings, one per grouped region. For caption i and image j every
noun of caption i is assigned to its most similar region of image j, and the image-caption score is the
mean cosine of these pairs (the paper's eqs. 1-2)::

    s[i, j] = 1/N_i sum_l max_k cos(n_l^i, r_k^j)                      direction "noun_to_region"

so regions no noun names (background, parts, objects the caption leaves out) cost nothing. The paper
ablates two other directions, offered here as options (its ablation: 59.2 / 52.5 / 56.5 VOC mIoU):

    s[i, j] = 1/M_j sum_k max_l cos(n_l^i, r_k^j)                      "region_to_noun"
    s[i, j] = (noun_to_region + region_to_noun) / 2                      "both"

The paper says only that "both" uses the two directions; the mean of the two scores is our reading.
The loss is the symmetric InfoNCE of CLIP over the B x B score matrix (eq. 3, written there without the
log), the logits being ``s * scale`` with a learnable ``scale = exp(logit_scale)`` clamped at 100::

    L = -1/B sum_i log softmax_j(scale * s[i, j])[i] - 1/B sum_j log softmax_i(scale * s[i, j])[j]

Padding and empty sets. Captions hold different numbers of nouns and images may hold empty regions, so
nouns (B, N, E) and regions (B, M, E) come with masks; masked entries never take part (their values are
ignored, even NaN). A caption without any noun, or an image without any valid region, has no score: its
pair is dropped from the batch, as a positive and as a negative, so the loss equals that of the batch
without the pair. (:func:`leafseg.text.nouns.caption_nouns` can instead give such a caption itself as
its one "noun".) A batch with no pair left gives a zero loss that still has a graph.

Under ``torch.distributed`` (``gather=True``) the negatives come from every rank, as in
:func:`leafseg.losses.contrastive.contrastive_loss`: each rank scores its own captions against all
images and its own images against all captions; the gradients of one big batch result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from leafseg.errors import ConfigError
from leafseg.losses.contrastive import LearnableTemperature, all_gather_with_grad, distributed_world

DIRECTIONS = ("noun_to_region", "region_to_noun", "both")


@dataclass
class NounRegionOutput:
    """The loss and what to log about it (diagnostics are detached tensors; read them with ``float``).

    loss:             scalar, caption_to_image + image_to_caption, with a graph.
    caption_to_image: scalar, the mean over kept captions of -log softmax over images (in several
                      processes, this rank's sum over the mean kept count per rank: the ranks' average is
                      the mean over the global batch's kept captions).
    image_to_caption: scalar, the mean over kept images of -log softmax over captions (likewise).
    scores:           (b, B) s[i, j] of this rank's captions against every image (B = b in one process).
    keep:             (b,) bool, the pairs of this rank that took part.
    accuracy:         scalar, top-1 retrieval accuracy over kept pairs, the mean of both directions.
    assignment:       (b, N) int64, the region of its own image each noun is assigned to, -1 for padding
                      or a dropped pair.
    scale:            scalar, the scale the scores were multiplied by (1 / temperature).
    """

    loss: torch.Tensor
    caption_to_image: torch.Tensor
    image_to_caption: torch.Tensor
    scores: torch.Tensor
    keep: torch.Tensor
    accuracy: torch.Tensor
    assignment: torch.Tensor
    scale: torch.Tensor


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over its last dimension where mask (same shape) is True; 0 where nothing is True."""
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)
    return total / mask.sum(-1).clamp_min(1)


def _cosines(nouns, noun_mask, regions, region_mask) -> torch.Tensor:
    """(Bc, N, E), (Bc, N), (Bi, M, E), (Bi, M) -> (Bc, Bi, N, M) cosines, masked entries zeroed first
    so that their values (even NaN) reach neither the scores nor the gradients."""
    n = F.normalize(torch.where(noun_mask[..., None], nouns.float(), 0.0), dim=-1)
    r = F.normalize(torch.where(region_mask[..., None], regions.float(), 0.0), dim=-1)
    return torch.einsum("ine,jme->ijnm", n, r)


def caption_image_scores(nouns: torch.Tensor, noun_mask: torch.Tensor, regions: torch.Tensor,
                         region_mask: torch.Tensor, direction: str = "noun_to_region") -> torch.Tensor:
    """Scores s[i, j] of caption i against image j (see the module docstring).

    nouns: (Bc, N, E), noun_mask: (Bc, N) bool; regions: (Bi, M, E), region_mask: (Bi, M) bool.
    Returns (Bc, Bi) float32; 0 where caption i has no noun or image j no valid region.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    cos = _cosines(nouns, noun_mask, regions, region_mask)  # (Bc, Bi, N, M)
    scores = []
    if direction in ("noun_to_region", "both"):
        best = cos.masked_fill(~region_mask[None, :, None, :], float("-inf")).amax(-1)  # (Bc, Bi, N)
        scores.append(_masked_mean(best, noun_mask[:, None, :] & region_mask.any(1)[None, :, None]))
    if direction in ("region_to_noun", "both"):
        best = cos.masked_fill(~noun_mask[:, None, :, None], float("-inf")).amax(-2)  # (Bc, Bi, M)
        scores.append(_masked_mean(best, region_mask[None, :, :] & noun_mask.any(1)[:, None, None]))
    return scores[0] if len(scores) == 1 else (scores[0] + scores[1]) / 2


def noun_assignment(nouns: torch.Tensor, noun_mask: torch.Tensor, regions: torch.Tensor,
                    region_mask: torch.Tensor) -> torch.Tensor:
    """The region of image i each noun of caption i is assigned to (eq. 2, paired items only).

    nouns (B, N, E), noun_mask (B, N), regions (B, M, E), region_mask (B, M) -> (B, N) int64 in [0, M),
    -1 for a padded noun or an image without a valid region.
    """
    n = F.normalize(nouns.float(), dim=-1)
    r = F.normalize(regions.float(), dim=-1)
    cos = torch.einsum("bne,bme->bnm", n, r).masked_fill(~region_mask[:, None, :], float("-inf"))
    best = cos.argmax(-1)
    valid = noun_mask & region_mask.any(1, keepdim=True)
    return torch.where(valid, best, torch.full_like(best, -1))


def _check(regions, region_mask, nouns, noun_mask) -> None:
    """Shapes and dtypes of the loss inputs; nouns may be (B, 0, anything) when no caption has a noun."""
    b = regions.shape[0]
    width_ok = nouns.ndim == 3 and (nouns.shape[2] == regions.shape[2] or nouns.shape[1] == 0)
    if regions.ndim != 3 or not width_ok or nouns.shape[0] != b:
        raise ValueError(f"need regions (B, M, E) and nouns (B, N, E) of one batch and width, got "
                         f"{tuple(regions.shape)} and {tuple(nouns.shape)}")
    if region_mask.shape != regions.shape[:2] or noun_mask.shape != nouns.shape[:2]:
        raise ValueError(f"masks must be (B, M) and (B, N), got {tuple(region_mask.shape)} and "
                         f"{tuple(noun_mask.shape)}")
    if region_mask.dtype != torch.bool or noun_mask.dtype != torch.bool:
        raise ValueError(f"masks must be bool, got {region_mask.dtype} and {noun_mask.dtype}")


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad dimension 1 of x (B, n, ...) with zeros (False for bool) to ``size``."""
    if x.shape[1] == size:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], size - x.shape[1], *x.shape[2:])], dim=1)


def _gather(regions, region_mask, nouns, noun_mask):
    """Every rank's batch, in rank order, padded to the largest M and N of any rank.

    Returns (regions (B, M', E), region_mask (B, M'), nouns (B, N', E), noun_mask (B, N'), offset of this
    rank's items); the embeddings keep their gradients (summed over ranks in the backward pass).
    """
    sizes = torch.tensor([regions.shape[1], nouns.shape[1]], device=regions.device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    m, n = int(sizes[0]), int(sizes[1])
    all_regions, offset = all_gather_with_grad(_pad(regions, m))
    all_nouns, _ = all_gather_with_grad(_pad(nouns, n))
    all_rmask = all_gather_with_grad(_pad(region_mask, m).float())[0] > 0.5
    all_nmask = all_gather_with_grad(_pad(noun_mask, n).float())[0] > 0.5
    return all_regions, all_rmask, all_nouns, all_nmask, offset


def _direction_loss(logits: torch.Tensor, keep_all: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor,
                    world: int = 1):
    """Cross entropy of the kept rows of logits (b, B) over the kept columns, without a host sync.

    Dropped rows keep all their columns (so they stay finite) and weigh 0. Returns (the sum over this rank's
    kept rows divided by the mean number of kept rows per rank, so that the ranks' average, which DDP's
    gradient averaging takes, is the mean over every kept row of the global batch (with one rank: the mean
    over kept rows); 0 with a graph when none is kept; top-1 hits (b,) bool).
    """
    logits = logits.masked_fill(keep[:, None] & ~keep_all[None, :], float("-inf"))
    per_row = F.cross_entropy(logits, targets, reduction="none")  # (b,)
    hits = (logits.argmax(1) == targets) & keep
    kept_per_rank = keep_all.sum().clamp_min(1) / world
    return torch.where(keep, per_row, 0.0).sum() / kept_per_rank, hits


def noun_region_loss(regions: torch.Tensor, region_mask: torch.Tensor, nouns: torch.Tensor,
                     noun_mask: torch.Tensor, logit_scale: torch.Tensor | float, *,
                     direction: str = "noun_to_region", gather: bool = True) -> NounRegionOutput:
    """The noun-region contrastive loss of a batch of B image-caption pairs (image b with caption b).

    regions: (B, M, E) region embeddings; region_mask: (B, M) bool, False for empty regions.
    nouns: (B, N, E) noun embeddings; noun_mask: (B, N) bool, False for padding.
    logit_scale: the scale (1 / temperature) multiplying the scores; a tensor to learn it.
    direction: "noun_to_region" (the paper's), "region_to_noun" or "both".
    gather: take negatives from every rank when distributed.
    Returns :class:`NounRegionOutput`.
    """
    _check(regions, region_mask, nouns, noun_mask)
    b = regions.shape[0]
    if nouns.shape[1] == 0:  # no caption has a noun: every pair is dropped (other ranks may still have pairs)
        nouns = regions.new_zeros(b, 0, regions.shape[2])
    world = distributed_world()[1] if gather else 1
    if world > 1:
        all_regions, all_rmask, all_nouns, all_nmask, offset = _gather(regions, region_mask, nouns, noun_mask)
        rows = caption_image_scores(nouns, noun_mask, all_regions, all_rmask, direction)  # (b, B)
        cols = caption_image_scores(all_nouns, all_nmask, regions, region_mask, direction).t()  # (b, B)
    else:
        all_rmask, all_nmask, offset = region_mask, noun_mask, 0
        rows = caption_image_scores(nouns, noun_mask, regions, region_mask, direction)
        cols = rows.t()
    keep_all = all_nmask.any(1) & all_rmask.any(1)  # (B,)
    keep = keep_all[offset : offset + b]
    targets = torch.arange(b, device=regions.device) + offset
    c2i, hits_c = _direction_loss(logit_scale * rows, keep_all, keep, targets, world)
    i2c, hits_i = _direction_loss(logit_scale * cols, keep_all, keep, targets, world)
    kept = keep.sum().clamp_min(1)
    with torch.no_grad():
        assignment = noun_assignment(nouns, noun_mask & keep[:, None], regions, region_mask)
        scale = torch.as_tensor(logit_scale, dtype=torch.float32).detach()
    return NounRegionOutput(
        loss=c2i + i2c, caption_to_image=c2i.detach(), image_to_caption=i2c.detach(), scores=rows.detach(),
        keep=keep, accuracy=(hits_c.sum() + hits_i.sum()).float() / (2 * kept), assignment=assignment,
        scale=scale)


class NounRegionLoss(LearnableTemperature):
    """:func:`noun_region_loss` with its learnable temperature (see :class:`LearnableTemperature`).

    Args:
        direction: "noun_to_region" (default, the paper's one-way loss), "region_to_noun" or "both".
        init_temperature: initial temperature (CLIP: 0.07, i.e. logit_scale = log(1/0.07)).
        max_scale: the largest scale (1 / temperature), 100 as in CLIP.
        gather: take negatives from every rank when distributed.
    forward(regions (B, M, E), region_mask (B, M), nouns (B, N, E), noun_mask (B, N)) -> NounRegionOutput.
    """

    def __init__(self, direction: str = "noun_to_region", init_temperature: float = 0.07,
                 max_scale: float = 100.0, gather: bool = True):
        super().__init__(init_temperature, max_scale)
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction, self.gather = direction, bool(gather)

    def forward(self, regions: torch.Tensor, region_mask: torch.Tensor, nouns: torch.Tensor,
                noun_mask: torch.Tensor) -> NounRegionOutput:
        return noun_region_loss(regions, region_mask, nouns, noun_mask, self.scale, direction=self.direction,
                                gather=self.gather)
