import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from leafseg.eval.metrics import ConfusionMatrix, confusion_matrix, metrics_from_confusion, miou

IGNORE = 255


def random_case(seed, num_classes, shape, ignore_frac=0.2):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=shape)
    target[rng.random(shape) < ignore_frac] = IGNORE
    pred = rng.integers(0, num_classes, size=shape)
    return pred, target


def reference_matrix(pred, target, num_classes):
    mat = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred.ravel(), target.ravel(), strict=True):
        if t != IGNORE:
            mat[t, p] += 1
    return mat


def reference_metrics(mat):
    c = mat.shape[0]
    ious, accs = [], []
    for k in range(c):
        tp = mat[k, k]
        union = mat[k, :].sum() + mat[:, k].sum() - tp
        ious.append(tp / union if union else math.nan)
        accs.append(tp / mat[k, :].sum() if mat[k, :].sum() else math.nan)
    present = [x for x in ious if not math.isnan(x)]
    recalls = [x for x in accs if not math.isnan(x)]
    total = mat.sum()
    fw = sum(mat[k, :].sum() / total * ious[k] for k in range(c) if mat[k, :].sum()) if total else math.nan
    return {
        "miou": float(np.mean(present)) if present else math.nan,
        "iou": ious,
        "acc": np.trace(mat) / total if total else math.nan,
        "macc": float(np.mean(recalls)) if recalls else math.nan,
        "freq_iou": fw,
    }


def assert_close(a, b):
    if isinstance(a, list):
        np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-12)
    elif math.isnan(b):
        assert math.isnan(a)
    else:
        assert a == pytest.approx(b, rel=1e-12)


@settings(max_examples=60, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_classes=st.integers(1, 6),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
    ignore_frac=st.sampled_from([0.0, 0.3, 1.0]),
    batches=st.integers(1, 3),
)
def test_confusion_matrix_matches_reference(seed, num_classes, shape, ignore_frac, batches):
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    ref = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in range(batches):
        pred, target = random_case(seed + i, num_classes, shape, ignore_frac)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
        ref += reference_matrix(pred, target, num_classes)
    np.testing.assert_array_equal(cm.mat.numpy(), ref)
    got, want = cm.compute(), reference_metrics(ref)
    for key, value in want.items():
        assert_close(got[key], value)
    assert got["pixels"] == ref.sum()


def test_two_dim_inputs_and_functional_miou():
    pred, target = random_case(0, 4, (9, 11))
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    want = reference_metrics(reference_matrix(pred, target, 4))["miou"]
    assert miou(p, t, 4) == pytest.approx(want)
    cm = ConfusionMatrix(4)
    cm.update(p, t)
    assert cm.compute()["miou"] == pytest.approx(want)


def test_perfect_prediction_and_absent_class():
    target = torch.tensor([[0, 0, 1], [1, IGNORE, 0]])
    result = metrics_from_confusion(confusion_matrix(target.clone(), target, 3))
    assert result["miou"] == 1.0 and result["acc"] == 1.0 and result["macc"] == 1.0
    assert math.isnan(result["iou"][2])  # class 2 neither in target nor predicted: excluded


def test_predicted_but_absent_class_counts_as_zero():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 2])
    result = ConfusionMatrix(3)
    result.update(pred, target)
    out = result.compute()
    assert out["iou"] == [1.0, 0.5, 0.0]
    assert out["miou"] == pytest.approx(0.5)


def test_prediction_at_ignored_pixels_is_not_inspected():
    target = torch.tensor([[0, IGNORE], [1, IGNORE]])
    pred = torch.tensor([[0, IGNORE], [1, -7]])
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    assert cm.mat.tolist() == [[1, 0], [0, 1]]


def test_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"prediction values must lie in \[0, 3\).*\[3\]"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="prediction values"):
        cm.update(torch.tensor([0, -1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target values"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    assert cm.mat.sum() == 0


def test_empty_matrix_and_reset():
    cm = ConfusionMatrix(2)
    assert math.isnan(cm.compute()["miou"]) and math.isnan(cm.compute()["acc"])
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    cm.reset()
    assert cm.mat.sum() == 0
    cm.all_reduce()  # no process group: no-op
    assert cm.mat.sum() == 0


def test_device_adopted_from_first_update():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert cm.mat.device.type == "cpu" and cm.mat.dtype == torch.int64


def _reduce_worker(rank, world_size, init_file, pred, target, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix(5)
        half = pred.shape[0] // world_size
        cm.update(pred[rank * half : (rank + 1) * half], target[rank * half : (rank + 1) * half])
        cm.all_reduce()
        if rank == 0:
            torch.save(cm.mat, out_file)
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_processes_equals_single_process(tmp_path):
    pred, target = random_case(3, 5, (4, 6, 5))
    pred, target = torch.from_numpy(pred), torch.from_numpy(target)
    out_file = tmp_path / "mat.pt"
    mp.spawn(
        _reduce_worker,
        args=(2, str(tmp_path / "init"), pred, target, str(out_file)),
        nprocs=2,
        join=True,
    )
    single = ConfusionMatrix(5)
    single.update(pred, target)
    assert torch.equal(torch.load(out_file, weights_only=True), single.mat)
