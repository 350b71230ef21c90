import itertools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from leafseg.eval.matching import ClusterMetric, hungarian_match, oracle_labels, oracle_miou
from leafseg.eval.metrics import ConfusionMatrix, miou

IGNORE = 255


def matched_total(confusion, assignment):
    return sum(confusion[k, assignment[k]] for k in range(len(assignment)))


def best_injective_total(confusion):
    """Max over injective maps from the smaller side to the larger one."""
    k, c = confusion.shape
    if k <= c:
        return max(sum(confusion[i, cls[i]] for i in range(k)) for cls in itertools.permutations(range(c), k))
    return max(sum(confusion[rows[j], j] for j in range(c)) for rows in itertools.permutations(range(k), c))


@settings(max_examples=60, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 5), high=st.sampled_from([3, 10**6]))
def test_square_hungarian_is_optimal_permutation(seed, size, high):
    confusion = np.random.default_rng(seed).integers(0, high, size=(size, size))
    assignment = hungarian_match(torch.from_numpy(confusion)).tolist()
    assert sorted(assignment) == list(range(size))
    assert matched_total(confusion, assignment) == best_injective_total(confusion)


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4), c=st.integers(2, 5))
def test_fewer_clusters_than_classes(seed, k, c):
    k = min(k, c - 1)
    confusion = np.random.default_rng(seed).integers(0, 10**6, size=(k, c))
    assignment = hungarian_match(torch.from_numpy(confusion)).tolist()
    assert len(set(assignment)) == k
    assert matched_total(confusion, assignment) == best_injective_total(confusion)


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 4), extra=st.integers(1, 3))
def test_extra_clusters_take_majority_class(seed, c, extra):
    k = c + extra
    # Large random counts: ties are practically impossible, so the answer is unique.
    confusion = np.random.default_rng(seed).integers(0, 10**9, size=(k, c))
    best, best_rows = -1, None
    for rows in itertools.permutations(range(k), c):
        total = sum(confusion[rows[j], j] for j in range(c))
        if total > best:
            best, best_rows = total, rows
    expected = confusion.argmax(axis=1)
    for cls, row in enumerate(best_rows):
        expected[row] = cls
    got = hungarian_match(torch.from_numpy(confusion))
    assert got.dtype == torch.int64
    assert got.tolist() == expected.tolist()


def test_hungarian_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(K, C\)"):
        hungarian_match(torch.zeros(3))


def test_cluster_metric_recovers_permuted_labels():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 4, size=(3, 8, 8)))
    target[:, 0] = IGNORE
    perm = torch.tensor([2, 0, 3, 1])
    clusters = perm[target.clamp(max=3)]  # cluster id = perm[class]; ignore pixels get anything
    metric = ClusterMetric(num_clusters=4, num_classes=4)
    metric.update(clusters[:2], target[:2])
    metric.update(clusters[2], target[2])
    out = metric.compute()
    assert out["miou"] == 1.0 and out["acc"] == 1.0
    assert [out["assignment"][int(p)] for p in perm] == [0, 1, 2, 3]
    assert metric.histogram.shape == (4, 4)


def test_cluster_metric_matches_remapped_confusion_matrix():
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.integers(0, 3, size=(4, 6, 6)))
    target[torch.from_numpy(rng.random((4, 6, 6)) < 0.2)] = IGNORE
    clusters = torch.from_numpy(rng.integers(0, 5, size=(4, 6, 6)))
    metric = ClusterMetric(num_clusters=5, num_classes=3)
    metric.update(clusters, target)
    out = metric.compute()
    assignment = torch.tensor(out["assignment"])
    reference = ConfusionMatrix(3)
    reference.update(assignment[clusters], target)
    want = reference.compute()
    for key in ("miou", "acc", "macc", "freq_iou"):
        assert out[key] == pytest.approx(want[key])
    assert metric.histogram.sum() == (target != IGNORE).sum()
    metric.reset()
    assert metric.histogram.sum() == 0


def reference_oracle(regions, target, num_classes):
    out = np.empty_like(target)
    for b in range(regions.shape[0]):
        for region in np.unique(regions[b]):
            inside = regions[b] == region
            labels = target[b][inside]
            labels = labels[labels != IGNORE]
            if labels.size == 0:
                out[b][inside] = IGNORE
            else:
                out[b][inside] = np.bincount(labels, minlength=num_classes).argmax()
    return out


@settings(max_examples=50, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)),
    k=st.integers(1, 6),
    c=st.integers(1, 5),
    ignore_frac=st.sampled_from([0.0, 0.4, 0.9]),
)
def test_oracle_labels_matches_per_region_loop(seed, shape, k, c, ignore_frac):
    rng = np.random.default_rng(seed)
    regions = rng.integers(0, k, size=shape)
    target = rng.integers(0, c, size=shape)
    target[rng.random(shape) < ignore_frac] = IGNORE
    got = oracle_labels(torch.from_numpy(regions), torch.from_numpy(target), c, num_regions=k)
    np.testing.assert_array_equal(got.numpy(), reference_oracle(regions, target, c))


def test_oracle_regions_are_per_image_and_miou_feeds_confusion_matrix():
    # Region 0 means different things in the two images.
    regions = torch.zeros(2, 2, 2, dtype=torch.long)
    target = torch.tensor([[[1, 1], [1, 0]], [[2, 2], [IGNORE, 0]]])
    labels = oracle_labels(regions, target, 3)
    assert labels.tolist() == [[[1, 1], [1, 1]], [[2, 2], [2, 2]]]
    assert oracle_miou(regions, target, 3) == pytest.approx(miou(labels, target, 3))
    perfect = oracle_miou(target.clamp(max=2), target, 3)
    assert perfect == 1.0


def test_oracle_labels_take_non_contiguous_region_maps():
    rng = np.random.default_rng(3)
    regions = rng.integers(0, 4, size=(2, 5, 7))
    target = rng.integers(0, 3, size=(2, 7, 5))
    transposed = torch.from_numpy(regions).transpose(1, 2)  # (2, 7, 5), not contiguous
    assert not transposed.is_contiguous()
    got = oracle_labels(transposed, torch.from_numpy(target), 3, num_regions=4)
    np.testing.assert_array_equal(got.numpy(), reference_oracle(transposed.numpy(), target, 3))


def test_oracle_all_ignore_region_and_bad_ids():
    regions = torch.tensor([[[0, 1], [1, 1]]])
    target = torch.tensor([[[IGNORE, 2], [2, 0]]])
    assert oracle_labels(regions, target, 3).tolist() == [[[IGNORE, 2], [2, 2]]]
    assert not math.isnan(oracle_miou(regions, target, 3))
    with pytest.raises(ValueError, match="region ids"):
        oracle_labels(regions, target, 3, num_regions=1)
    with pytest.raises(ValueError, match="target values"):
        oracle_labels(regions, target, 2)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        oracle_labels(regions[0], target[0], 3)


def _reduce_worker(rank, world_size, init_file, clusters, target, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        metric = ClusterMetric(num_clusters=4, num_classes=3)
        half = clusters.shape[0] // world_size
        metric.update(clusters[rank * half : (rank + 1) * half], target[rank * half : (rank + 1) * half])
        metric.all_reduce()
        if rank == 0:
            torch.save(metric.histogram.contiguous(), out_file)
    finally:
        dist.destroy_process_group()


def test_cluster_metric_all_reduce_two_processes(tmp_path):
    rng = np.random.default_rng(2)
    clusters = torch.from_numpy(rng.integers(0, 4, size=(4, 5, 5)))
    target = torch.from_numpy(rng.integers(0, 3, size=(4, 5, 5)))
    out_file = tmp_path / "hist.pt"
    mp.spawn(
        _reduce_worker,
        args=(2, str(tmp_path / "init"), clusters, target, str(out_file)),
        nprocs=2,
        join=True,
    )
    single = ClusterMetric(num_clusters=4, num_classes=3)
    single.update(clusters, target)
    assert torch.equal(torch.load(out_file, weights_only=True), single.histogram)
