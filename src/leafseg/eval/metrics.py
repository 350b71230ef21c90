"""Confusion-matrix segmentation metrics: mIoU, pixel accuracy, mean class accuracy.

Counts are accumulated with ``torch.bincount`` on the tensors' own device, so a
whole evaluation runs without moving label maps to the host. The conventions
follow mmsegmentation:

* the matrix is indexed ``[ground_truth, prediction]``;
* pixels whose ground truth equals ``ignore_index`` are not counted (their
  prediction is not even inspected, so it may hold any value);
* a class whose union (ground-truth pixels + predicted pixels - intersection)
  is zero has IoU NaN and is left out of the mean. The mIoU is therefore the
  mean over classes that appear in the ground truth *or* in the prediction:
  a class that is predicted but absent from the ground truth scores IoU 0 and
  pulls the mean down, a class that appears nowhere does not count.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix", "confusion_matrix", "metrics_from_confusion", "miou"]


def _check_labels(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    for name, t in (("prediction", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer label tensor, got dtype {t.dtype}")


def _out_of_range(values: Tensor, mask: Tensor, upper: int) -> Tensor:
    """Boolean scalar tensor: does any value under ``mask`` fall outside [0, upper)?"""
    return (mask & ((values < 0) | (values >= upper))).any()


def _raise_range_error(name: str, values: Tensor, mask: Tensor, upper: int, ignore_index: int) -> None:
    bad = values[mask & ((values < 0) | (values >= upper))]
    if bad.numel():
        shown = sorted(set(bad.unique()[:8].tolist()))
        raise ValueError(
            f"{name} values must lie in [0, {upper}) wherever the target is not "
            f"ignore_index={ignore_index}; found {shown}"
        )


def confusion_matrix(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    num_pred_classes: int | None = None,
) -> Tensor:
    """Count (ground truth, prediction) pairs with one bincount on the inputs' device.

    Args:
        pred: (B, H, W) or (H, W) integer predicted labels in [0, num_pred_classes)
            wherever ``target`` is not ``ignore_index``.
        target: integer ground truth, same shape as ``pred``, values in
            [0, num_classes) or ``ignore_index``.
        num_classes: number of ground-truth classes C.
        ignore_index: ground-truth value excluded from the counts.
        num_pred_classes: number of prediction labels P (default C); a cluster
            histogram uses P = number of clusters.

    Returns:
        (C, P) int64 on ``pred``'s device; entry [i, j] counts pixels of class i
        predicted as j.

    Raises:
        ValueError: shapes differ, or a counted pixel has an out-of-range label.
        TypeError: a label tensor is not of an integer dtype.
    """
    _check_labels(pred, target)
    num_pred = num_classes if num_pred_classes is None else num_pred_classes
    p = pred.reshape(-1).long()
    t = target.reshape(-1).to(p.device).long()
    valid = t != ignore_index
    if bool(torch.stack([_out_of_range(t, valid, num_classes), _out_of_range(p, valid, num_pred)]).any()):
        _raise_range_error("target", t, valid, num_classes, ignore_index)
        _raise_range_error("prediction", p, valid, num_pred, ignore_index)
    size = num_classes * num_pred
    # Uncounted pixels go to one extra trailing bin, which avoids a data-dependent
    # boolean gather (and the host sync it implies on an accelerator).
    index = torch.where(valid, t * num_pred + p, torch.full_like(t, size))
    counts = torch.bincount(index, minlength=size + 1)[:size]
    return counts.view(num_classes, num_pred)


def _nanmean(x: Tensor) -> float:
    keep = ~torch.isnan(x)
    if not bool(keep.any()):
        return float("nan")
    return float(x[keep].mean())


def metrics_from_confusion(mat: Tensor) -> dict:
    """Segmentation metrics from a square confusion matrix.

    Args:
        mat: (C, C) integer counts indexed [ground_truth, prediction].

    Returns:
        dict of plain Python values:
        ``miou`` (float, NaN-excluding mean of ``iou``), ``iou`` (list of C floats,
        NaN where a class is neither in the ground truth nor predicted), ``acc``
        (float, overall pixel accuracy), ``macc`` (float, NaN-excluding mean of
        ``class_acc``), ``class_acc`` (list of C floats: recall per class, NaN where
        the class has no ground-truth pixel), ``freq_iou`` (float,
        frequency-weighted IoU: sum over classes of gt_share * iou) and
        ``pixels`` (int, number of counted pixels). With no counted pixel every
        float is NaN.
    """
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {tuple(mat.shape)}")
    m = mat.double()
    tp = m.diagonal()
    gt = m.sum(dim=1)
    predicted = m.sum(dim=0)
    total = m.sum()
    union = gt + predicted - tp
    iou = tp / union  # 0 / 0 -> NaN: class absent from both maps
    class_acc = tp / gt
    share = gt / total
    freq_iou = (share[gt > 0] * iou[gt > 0]).sum() if bool(total > 0) else torch.tensor(float("nan"))
    return {
        "miou": _nanmean(iou),
        "iou": iou.tolist(),
        "acc": float(tp.sum() / total),
        "macc": _nanmean(class_acc),
        "class_acc": class_acc.tolist(),
        "freq_iou": float(freq_iou),
        "pixels": int(mat.sum()),
    }


def _all_reduce_sum(counts: Tensor) -> None:
    """Sum ``counts`` in place over the default process group, if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix over a dataset.

    Args:
        num_classes: number of classes C.
        ignore_index: ground-truth value excluded from the counts.
        device: where the matrix lives. ``None`` adopts the device of the first
            ``update`` (CPU until then).

    Example::

        cm = ConfusionMatrix(21)
        for images, labels in loader:
            cm.update(model(images).argmax(1), labels)
        cm.all_reduce()
        print(cm.compute()["miou"])
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        self._mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @property
    def mat(self) -> Tensor:
        """(C, C) int64 counts, rows = ground truth, columns = prediction (live, do not modify)."""
        return self._mat

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred: (B, H, W) or (H, W) integer predictions in [0, C) wherever
                ``target`` is not ``ignore_index``.
            target: same shape, integer ground truth in [0, C) or ``ignore_index``.
        """
        if not self._device_fixed:
            self._mat = self._mat.to(pred.device)
            self._device_fixed = True
        counts = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self._mat += counts.to(self._mat.device)

    def reset(self) -> None:
        """Zero the counts (the device is kept)."""
        self._mat.zero_()

    def all_reduce(self) -> None:
        """Sum the counts over all processes of the default ``torch.distributed`` group.

        A no-op when torch.distributed is not initialised. Every process must call it.
        """
        _all_reduce_sum(self._mat)

    def compute(self) -> dict:
        """Metrics of the counts so far; see :func:`metrics_from_confusion` for the keys."""
        return metrics_from_confusion(self._mat)


def miou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """mIoU of one batch.

    Args:
        pred: (B, H, W) or (H, W) integer predictions.
        target: same shape, integer ground truth with ``ignore_index`` for unlabelled pixels.
        num_classes: number of classes C.
        ignore_index: ground-truth value excluded from the counts.

    Returns:
        Mean IoU over classes present in the ground truth or the prediction (NaN if none).
    """
    return metrics_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))["miou"]
