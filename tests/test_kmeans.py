import numpy as np
import pytest
import torch

from leafseg.grouping import batched_kmeans


def blobs(b=4, n=300, d=16, k=5, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b, k, d, generator=g)
    labels = torch.randint(k, (b, n), generator=g)
    x = centres.gather(1, labels[..., None].expand(-1, -1, d)) + spread * torch.randn(b, n, d, generator=g)
    return x, labels


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two label vectors induce the same partition (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_recovers_well_separated_clusters(metric):
    x, truth = blobs()
    res = batched_kmeans(x, 5, metric=metric, seed=0)
    assert res.labels.shape == (4, 300) and res.centroids.shape == (4, 5, 16)
    for i in range(4):
        assert same_partition(res.labels[i], truth[i])


def test_batched_equals_one_at_a_time():
    x, _ = blobs(b=3, spread=0.8)
    init = x[:, :6].clone()
    together = batched_kmeans(x, 6, init=init, tol=0.0, max_iter=20)
    for i in range(3):
        alone = batched_kmeans(x[i : i + 1], 6, init=init[i : i + 1], tol=0.0, max_iter=20)
        assert torch.equal(alone.labels[0], together.labels[i])
        torch.testing.assert_close(alone.centroids[0], together.centroids[i], rtol=1e-5, atol=1e-5)


def test_seeded_runs_repeat_and_seeds_differ():
    x, _ = blobs(spread=1.5)
    a = batched_kmeans(x, 7, seed=3)
    b = batched_kmeans(x, 7, seed=3)
    assert torch.equal(a.labels, b.labels)
    c = batched_kmeans(x, 7, seed=4, max_iter=1)
    assert not torch.equal(a.centroids, c.centroids)


def test_cosine_centroids_are_unit_norm_and_scale_invariant():
    x, _ = blobs(spread=0.3)
    res = batched_kmeans(x, 5, metric="cosine")
    torch.testing.assert_close(res.centroids.norm(dim=-1), torch.ones(4, 5))
    scaled = batched_kmeans(x * torch.rand(4, 300, 1).add(0.5), 5, metric="cosine")
    assert torch.equal(res.labels, scaled.labels)


def test_no_empty_cluster_when_k_equals_distinct_points():
    x = torch.randn(2, 12, 3)
    res = batched_kmeans(x, 12, seed=0)
    for i in range(2):
        assert len(set(res.labels[i].tolist())) == 12
    assert float(res.inertia.max()) < 1e-4


def test_inertia_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.cluster")
    # One seeded start can land in a worse optimum on either side, so the two are compared as distributions:
    # 8 point sets x 3 items x 3 seeds, the mean ratio of the inertias.
    ratios = []
    for data_seed in range(8):
        x, _ = blobs(b=3, n=400, d=8, k=6, spread=1.0, seed=data_seed)
        for s in range(3):
            ours = batched_kmeans(x, 6, seed=s).inertia
            for i in range(3):
                theirs = sklearn.KMeans(6, n_init=1, random_state=s).fit(x[i].numpy()).inertia_
                ratios.append(float(ours[i]) / theirs)
    assert sum(ratios) / len(ratios) <= 1.02, ratios


def test_inertia_is_reported_for_the_returned_labels():
    x, _ = blobs(spread=1.0)
    res = batched_kmeans(x, 5)
    means = torch.stack([torch.stack([x[i][res.labels[i] == j].mean(0) for j in range(5)]) for i in range(4)])
    expected = ((x - means.gather(1, res.labels[..., None].expand(-1, -1, 16))) ** 2).sum((1, 2))
    np.testing.assert_allclose(res.inertia.numpy(), expected.numpy(), rtol=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        batched_kmeans(torch.randn(10, 3), 2)
    with pytest.raises(ValueError, match="between 1 and"):
        batched_kmeans(torch.randn(1, 4, 3), 5)
    with pytest.raises(ValueError, match="unknown metric"):
        batched_kmeans(torch.randn(1, 4, 3), 2, metric="manhattan")


def numpy_lloyd(x: np.ndarray, centres: np.ndarray, metric: str, tol: float, max_iter: int = 300):
    """Plain Lloyd in float64 with scikit-learn's two stopping rules (no label changed; the sum over centres
    of the squared shifts at most tol times the mean per-dimension variance). Returns labels, centres, n_iter."""
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    threshold = tol * x.var(axis=0).mean()

    def assign(c):
        if metric == "cosine":
            return (x @ c.T).argmax(1)
        return ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)

    labels_old, n_iter = None, 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is returned
        labels = assign(centres)
        if labels_old is not None and np.array_equal(labels, labels_old):
            n_iter -= 1
            break
        assert len(np.unique(labels)) == len(centres), "the reference case must not empty a cluster"
        new = np.stack([x[labels == j].mean(0) for j in range(len(centres))])
        if metric == "cosine":
            new /= np.linalg.norm(new, axis=1, keepdims=True)
        shift = ((new - centres) ** 2).sum()
        centres, labels_old = new, labels
        if shift <= threshold:
            break
    return assign(centres), centres, n_iter


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("tol", [0.0, 1e-2])
def test_same_labels_centres_and_iterations_as_a_numpy_lloyd_from_the_same_start(metric, tol):
    x, _ = blobs(b=1, n=500, d=6, k=5, spread=1.2, seed=3)  # overlapping blobs: many iterations
    points = x[0].double().numpy()
    start = points[[0, 100, 200, 300, 400]]
    if metric == "cosine":
        start = start / np.linalg.norm(start, axis=1, keepdims=True)
    labels, centres, n_iter = numpy_lloyd(points, start.copy(), metric, tol)
    assert n_iter > 3  # the case exercises the iterations, not only the start
    ours = batched_kmeans(x, 5, metric=metric, tol=tol, init=torch.from_numpy(start).float()[None], max_iter=300)
    assert ours.n_iter == n_iter
    assert np.array_equal(ours.labels[0].numpy(), labels)
    np.testing.assert_allclose(ours.centroids[0].numpy(), centres, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_an_item_gets_the_same_clusters_in_any_batch_and_chunk(metric):
    x, _ = blobs(b=6, n=200, d=8, k=5, spread=0.8, seed=3)
    together = batched_kmeans(x, 5, metric=metric, seed=7)
    chunked = batched_kmeans(x, 5, metric=metric, seed=7, chunk_size=4)
    for i in range(6):
        alone = batched_kmeans(x[i : i + 1], 5, metric=metric, seed=7)
        for res in (together, chunked):
            assert torch.equal(res.labels[i], alone.labels[0])
            assert torch.allclose(res.centroids[i], alone.centroids[0], atol=1e-6)
            assert int(res.iterations[i]) == int(alone.iterations[0])
    # a batch in another order, as another process's share of it would be
    order = torch.tensor([4, 1, 5, 0])
    part = batched_kmeans(x[order], 5, metric=metric, seed=7)
    assert torch.equal(part.labels, together.labels[order])
    # items stop on their own: they do not all run the slowest item's iterations
    assert together.n_iter == int(together.iterations.max())


def test_item_seeds_give_each_item_its_own_draws():
    x, _ = blobs(b=1, n=200, d=8, k=5, spread=1.0, seed=4)
    copies = x.expand(8, -1, -1).contiguous()
    shared = batched_kmeans(copies, 5, seed=0, max_iter=0)
    assert all(torch.equal(shared.centroids[0], c) for c in shared.centroids)  # one stream: one start
    own = batched_kmeans(copies, 5, item_seeds=torch.arange(8), max_iter=0)
    assert len({tuple(c.flatten().tolist()) for c in own.centroids}) > 1
    first = batched_kmeans(copies[:3], 5, item_seeds=torch.arange(3), max_iter=0)
    assert torch.equal(first.centroids, own.centroids[:3])
    with pytest.raises(ValueError, match="item_seeds"):
        batched_kmeans(copies, 5, item_seeds=torch.arange(3))


def test_kmeanspp_picks_follow_the_weights():
    from leafseg.grouping.kmeans import _pick

    weights = torch.tensor([[1.0, 0.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 5.0, 0.0]])
    u = torch.rand(2, 50_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    picks = _pick(weights, u)
    freq = torch.stack([torch.bincount(p, minlength=5) for p in picks]).double() / u.shape[1]
    assert torch.allclose(freq[0], torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.01)
    assert freq[0, 1] == 0 and freq[1, 3] == 1  # a point of weight zero is never drawn
