"""Label-free evaluation: Hungarian-matched clusters and oracle region labelling.

Two ways of scoring a segmentation whose labels carry no class names:

* **Hungarian matching** (unsupervised protocol of STEGO and PiCIE). A (K, C)
  histogram of predicted cluster vs. ground-truth class is accumulated over
  the whole dataset; one cluster -> class assignment maximising the matched
  pixels is then chosen for the dataset, and the remapped predictions are
  scored with the ordinary confusion-matrix metrics.
* **Oracle labelling** (the "oracle mIoU" of pseudo-mask quality, as in S-Seg).
  Every region of every image independently takes the majority ground-truth
  class of its own pixels. This bounds what a perfect classifier could reach
  with those regions.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from leafseg.eval.metrics import confusion_matrix, metrics_from_confusion, miou

__all__ = ["ClusterMetric", "hungarian_match", "oracle_labels", "oracle_miou"]


def hungarian_match(confusion: Tensor) -> Tensor:
    """Assign each predicted cluster a class, maximising the matched pixel count.

    Args:
        confusion: (K, C) non-negative counts (any real dtype); entry [k, c] is the
            number of pixels of cluster k whose ground truth is class c.

    Returns:
        (K,) int64 on ``confusion``'s device: the class of every cluster.

        * K == C: a one-to-one assignment (a permutation) maximising the matched
          pixels, by ``scipy.optimize.linear_sum_assignment`` on the negated counts.
        * K < C: one-to-one for the K clusters; C - K classes receive no cluster.
        * K > C: the "extra clusters" rule of STEGO: the C clusters chosen by the
          one-to-one assignment are matched first, then every remaining cluster
          takes its majority class (argmax of its row, lowest class on ties).
    """
    if confusion.ndim != 2 or 0 in confusion.shape:
        raise ValueError(f"confusion must be a non-empty (K, C) matrix, got shape {tuple(confusion.shape)}")
    # The cost matrix is tiny (K x C); the solver runs on the host.
    counts = confusion.detach().double().cpu()
    rows, cols = linear_sum_assignment(-counts.numpy())
    assignment = counts.argmax(dim=1)  # majority class, used by clusters left unmatched (K > C)
    assignment[torch.from_numpy(rows).long()] = torch.from_numpy(cols).long()
    return assignment.to(confusion.device)


class ClusterMetric:
    """Dataset-level Hungarian-matched segmentation metrics for cluster predictions.

    Accumulates a cluster-vs-class histogram on the device; ``compute`` finds one
    assignment for the whole dataset (not per image) and scores the remapped
    predictions.

    Args:
        num_clusters: number of predicted cluster ids K.
        num_classes: number of ground-truth classes C.
        ignore_index: ground-truth value excluded from the counts.
        device: where the histogram lives; ``None`` adopts the device of the first update.
    """

    def __init__(
        self,
        num_clusters: int,
        num_classes: int,
        ignore_index: int = 255,
        device: torch.device | str | None = None,
    ):
        if num_clusters < 1 or num_classes < 1:
            raise ValueError(
                f"need positive sizes, got num_clusters={num_clusters}, num_classes={num_classes}"
            )
        self.num_clusters = num_clusters
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        # Stored [class, cluster] as produced by confusion_matrix; exposed as (K, C).
        self._counts = torch.zeros(num_classes, num_clusters, dtype=torch.int64, device=device)

    @property
    def histogram(self) -> Tensor:
        """(K, C) int64 view: [cluster, class] pixel counts so far."""
        return self._counts.t()

    def update(self, clusters: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            clusters: (B, H, W) or (H, W) integer cluster ids in [0, K) wherever
                ``target`` is not ``ignore_index``.
            target: same shape, integer ground truth in [0, C) or ``ignore_index``.
        """
        if not self._device_fixed:
            self._counts = self._counts.to(clusters.device)
            self._device_fixed = True
        counts = confusion_matrix(
            clusters, target, self.num_classes, self.ignore_index, num_pred_classes=self.num_clusters
        )
        self._counts += counts.to(self._counts.device)

    def reset(self) -> None:
        """Zero the histogram (the device is kept)."""
        self._counts.zero_()

    def all_reduce(self) -> None:
        """Sum the histogram over the default ``torch.distributed`` group (no-op when not initialised)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._counts, op=dist.ReduceOp.SUM)

    def assignment(self) -> Tensor:
        """(K,) int64 class of every cluster under the dataset-level Hungarian matching."""
        return hungarian_match(self.histogram)

    def compute(self) -> dict:
        """Hungarian-matched metrics.

        Returns:
            The keys of :func:`leafseg.eval.metrics.metrics_from_confusion` computed on
            the remapped predictions, plus ``assignment`` (list of K ints, the class of
            every cluster).
        """
        assignment = self.assignment()
        # (C, C) [gt, matched class]: columns of the [gt, cluster] counts merged by their class.
        mat = torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.int64, device=self._counts.device
        ).index_add_(1, assignment, self._counts)
        result = metrics_from_confusion(mat)
        result["assignment"] = assignment.tolist()
        return result


def oracle_labels(
    regions: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    num_regions: int | None = None,
) -> Tensor:
    """Label every region of every image with its majority ground-truth class.

    One bincount over (image, region, class) triples; no per-image or per-region loop.

    Args:
        regions: (B, H, W) integer region ids in [0, K), numbered per image.
        target: (B, H, W) integer ground truth in [0, C) or ``ignore_index``.
        num_classes: number of classes C.
        ignore_index: ground-truth value that does not vote.
        num_regions: K; inferred as ``regions.max() + 1`` when omitted.

    Returns:
        (B, H, W) int64 on ``regions``' device: each pixel's region label. A region
        whose pixels are all ``ignore_index`` (or that is empty) is labelled
        ``ignore_index``; ties go to the lowest class id.
    """
    if regions.ndim != 3:
        raise ValueError(f"regions must be (B, H, W), got shape {tuple(regions.shape)}")
    _check_same_shape(regions, target)
    b = regions.shape[0]
    r = regions.long()
    t = target.to(r.device).long()
    k = int(r.max()) + 1 if num_regions is None else num_regions
    if bool(((r < 0) | (r >= k)).any()):
        raise ValueError(f"region ids must lie in [0, {k}); found values outside")
    valid = t != ignore_index
    if bool((valid & ((t < 0) | (t >= num_classes))).any()):
        raise ValueError(f"target values must lie in [0, {num_classes}) or equal ignore_index={ignore_index}")
    image = torch.arange(b, device=r.device).view(b, 1, 1)
    size = b * k * num_classes
    index = torch.where(valid, (image * k + r) * num_classes + t, torch.full_like(r, size))
    votes = torch.bincount(index.reshape(-1), minlength=size + 1)[:size].view(b, k, num_classes)
    label = torch.where(
        votes.sum(-1) > 0, votes.argmax(-1), torch.full((b, k), ignore_index, device=r.device)
    )
    return label.gather(1, r.reshape(b, -1)).view_as(r)


def _check_same_shape(regions: Tensor, target: Tensor) -> None:
    if regions.shape != target.shape:
        raise ValueError(f"regions and target shapes differ: {tuple(regions.shape)} vs {tuple(target.shape)}")
    for name, x in (("regions", regions), ("target", target)):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")


def oracle_miou(
    regions: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    num_regions: int | None = None,
) -> float:
    """mIoU of :func:`oracle_labels` against ``target`` for one batch.

    Args:
        regions: (B, H, W) integer region ids in [0, K), numbered per image.
        target: (B, H, W) integer ground truth in [0, C) or ``ignore_index``.

    Returns:
        The oracle mIoU as a float. For a dataset, feed :func:`oracle_labels`
        batch by batch into a ``ConfusionMatrix`` instead.
    """
    labels = oracle_labels(regions, target, num_classes, ignore_index, num_regions)
    return miou(labels, target, num_classes, ignore_index)
