"""Batched k-means: every item of a batch is clustered independently, all at once, on the tensors' device.

The point sets of a batch share one shape ``(B, N, D)`` (for example the ``N = h*w`` patch tokens of ``B``
images), so one Lloyd iteration is a batched matrix product, an argmin and two scatter-adds, whatever ``B``.
Initialisation is greedy k-means++ (several candidates per step, the best kept). Every item's result is its
own: its k-means++ draws come from the seed alone (or from its own entry of ``item_seeds``), drawn on the CPU
and turned into picks by inverse transform sampling of the item's own weights, and an item stops its Lloyd
iterations when it converges, whatever the rest of its chunk does. So an image gets the same clusters alone,
in any batch, in any chunk, on any number of processes, and the draws are the same on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")


@dataclass
class KMeansResult:
    """Output of :func:`batched_kmeans`.

    labels:    (B, N) int64, cluster index of every point.
    centroids: (B, K, D) float, final cluster centres (unit norm for the cosine metric).
    inertia:   (B,) float, sum over points of the distance to their centre (squared Euclidean, or 1 - cosine).
    iterations: (B,) int64 on the CPU, the Lloyd iterations of each item.
    n_iter:    the most Lloyd iterations any item ran (a property).
    """

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: torch.Tensor
    iterations: torch.Tensor

    @property
    def n_iter(self) -> int:
        return int(self.iterations.max()) if self.iterations.numel() else 0


def _distances(xt: torch.Tensor, c: torch.Tensor, x_sq: torch.Tensor | None, metric: str) -> torch.Tensor:
    """Distances between centres and points, centres first (the faster layout for a few centres).

    xt: (B, D, N) points (a transposed view); c: (B, K, D); x_sq: (B, 1, N) squared norms of the
    points (Euclidean only). Returns (B, K, N): squared Euclidean distances (clamped at 0) or cosine
    distances ``1 - c.x`` (points and centres already unit norm).
    """
    if metric == "cosine":
        return torch.baddbmm(torch.ones_like(c[:, :, :1]), c, xt, alpha=-1.0)
    c_sq = torch.linalg.vector_norm(c, dim=-1, keepdim=True).square()  # (B, K, 1)
    return torch.baddbmm(x_sq + c_sq, c, xt, alpha=-2.0).clamp_min_(0.0)


def _draws(b: int, k: int, trials: int, seed: int, item_seeds) -> torch.Tensor:
    """Uniform numbers in [0, 1) for the k-means++ steps: (B, K, T), float64, on the CPU.

    Without ``item_seeds`` every item reads the same numbers, drawn from ``seed``; with them, item i reads its
    own, drawn from ``item_seeds[i]``. Either way an item's numbers do not depend on the rest of the batch.
    """
    def stream(s: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(s))
        return torch.rand(k, trials, generator=g, dtype=torch.float64)

    if item_seeds is None:
        return stream(seed).expand(b, k, trials)
    return torch.stack([stream(s) for s in item_seeds.tolist()])


def _pick(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse transform sampling, row by row. weights: (B, N) >= 0 with a positive sum; u: (B, T) in [0, 1).
    Returns (B, T) int64 indices, each drawn with probability proportional to its row's weights."""
    cdf = weights.double().cumsum(1)
    target = u.to(cdf.device) * cdf[:, -1:]
    picks = torch.searchsorted(cdf, target, right=True)  # the first index whose cumulative weight passes
    return picks.clamp_max_(weights.shape[1] - 1)


def _kmeanspp_init(
    x: torch.Tensor, xt: torch.Tensor, k: int, x_sq, metric: str, draws: torch.Tensor,
) -> torch.Tensor:
    """Greedy k-means++ seeding for every item at once (the variant scikit-learn uses).

    x: (B, N, D), xt: (B, D, N) the same points; draws: (B, K, T) uniform numbers (:func:`_draws`). Returns
    (B, K, D) initial centres: the first drawn uniformly; at each next step T candidates are drawn with
    probability proportional to the distance to the nearest centre so far, and the one that lowers the total
    distance most is kept (T = 1 is plain k-means++).
    """
    b, n, d = x.shape
    trials = draws.shape[2]
    draws = draws.to(x.device)  # once, not per step
    batch = torch.arange(b, device=x.device)
    first = (draws[:, 0, 0] * n).long().clamp_max_(n - 1)
    centres = x.new_empty(b, k, d)
    centres[:, 0] = x[batch, first]
    nearest = _distances(xt, centres[:, :1], x_sq, metric).squeeze(1)  # (B, N)
    for j in range(1, k):
        # All-zero rows (fewer distinct points than k) fall back to uniform sampling.
        weights = nearest.clamp_min(0.0) + (nearest.sum(1, keepdim=True) <= 0).to(nearest.dtype)
        picks = _pick(weights, draws[:, j])  # (B, T)
        cand = x.gather(1, picks.unsqueeze(-1).expand(b, trials, d))  # (B, T, D)
        cand_dist = torch.minimum(nearest.unsqueeze(1), _distances(xt, cand, x_sq, metric))  # (B, T, N)
        best = cand_dist.sum(2).argmin(1)  # (B,)
        centres[:, j] = cand[batch, best]
        nearest = cand_dist[batch, best]
    return centres


def _update(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums and counts. x: (B, N, D); labels: (B, N). Returns sums (B, K, D), counts (B, K)."""
    b, n, _ = x.shape
    onehot = x.new_zeros(b, k, n).scatter_(1, labels.unsqueeze(1), 1.0)  # (B, K, N)
    return torch.bmm(onehot, x), onehot.sum(-1)


def _refill_empty(centres, counts, x, dist_to_own) -> torch.Tensor:
    """Move every empty cluster onto one of the points farthest from their own centre.

    centres: (B, K, D); counts: (B, K); x: (B, N, D); dist_to_own: (B, N). Returns the new centres.
    The j-th empty cluster of an item takes that item's j-th farthest point, so no two share a point.
    """
    empty = counts == 0  # (B, K)
    if not bool(empty.any()):
        return centres
    k = centres.shape[1]
    far = dist_to_own.topk(min(k, x.shape[1]), dim=1).indices  # (B, K')
    rank = (empty.cumsum(1) - 1).clamp(0, far.shape[1] - 1)  # (B, K): order among the empty clusters
    donor = far.gather(1, rank)  # (B, K) point index for each (possibly empty) cluster
    donor_pts = x.gather(1, donor.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    return torch.where(empty.unsqueeze(-1), donor_pts, centres)


def _default_chunk(x: torch.Tensor) -> int:
    """Items per chunk: all of them on an accelerator; on the CPU as many as fit in about 24 MB, so that
    the Lloyd iterations of a chunk run from cache instead of streaming the whole batch from memory."""
    if x.device.type != "cpu":
        return x.shape[0]
    per_item = x.shape[1] * x.shape[2] * 4
    return max(1, min(x.shape[0], (24 << 20) // per_item))


@torch.no_grad()
def batched_kmeans(
    x: torch.Tensor,
    k: int,
    *,
    metric: str = "euclidean",
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int | None = 0,
    init: torch.Tensor | None = None,
    init_trials: int | None = None,
    chunk_size: int | None = None,
    item_seeds: torch.Tensor | None = None,
) -> KMeansResult:
    """Cluster each of B point sets into k clusters, in parallel; each item's result is what it gets alone.

    x: (B, N, D) float points (any device; float16/bfloat16 inputs are clustered in float32).
    k: clusters per item, 1 <= k <= N.
    metric: "euclidean" (Lloyd on squared distances) or "cosine" (spherical k-means: points and centres
        are L2-normalised, centres re-normalised after each update).
    max_iter: cap on Lloyd iterations. tol: an item has converged when an assignment changes no label, or
        when the sum over its centres of their squared shifts is at most ``tol`` times its mean
        per-dimension variance (scikit-learn's two rules); a converged item stops (its centres stay), the
        others go on.
    seed: seed of the k-means++ draws (None: non-deterministic). Every item reads the same draws, so an
        item's clusters do not depend on the batch it is in. init: optional (B, K, D) initial centres.
    item_seeds: optional (B,) integer seeds, one stream of draws per item instead (restarts of one point
        set, for instance); ``seed`` is then unused.
    init_trials: candidates per greedy k-means++ step (default 2 + log k, as scikit-learn; 1 = plain).
    chunk_size: items clustered together (default: the whole batch on an accelerator, cache-sized chunks on
        the CPU); a matter of speed only, the results do not depend on it.
    Returns a :class:`KMeansResult` (labels (B, N), centroids (B, K, D), inertia (B,), n_iter: the most
    iterations any item ran, iterations: (B,) each item's).
    """
    if x.dim() != 3:
        raise ValueError(f"batched_kmeans expects points of shape (B, N, D), got {tuple(x.shape)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    b, n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if init is not None and init.shape != (b, k, d):
        raise ValueError(f"init must have shape {(b, k, d)}, got {tuple(init.shape)}")
    if item_seeds is not None:
        item_seeds = torch.as_tensor(item_seeds).reshape(-1)
        if item_seeds.numel() != b or item_seeds.is_floating_point():
            raise ValueError(f"item_seeds must hold {b} integers, one per item, got {tuple(item_seeds.shape)}")
    draws = None
    if init is None:
        trials = init_trials or 2 + int(math.log(k))
        base = seed if seed is not None else int(torch.seed() % (2**63))
        draws = _draws(b, k, trials, base, item_seeds)
    step = chunk_size or _default_chunk(x)
    parts = [
        _cluster(x[i : i + step], k, metric, max_iter, tol,
                 None if draws is None else draws[i : i + step], None if init is None else init[i : i + step])
        for i in range(0, b, step)
    ]
    if len(parts) == 1:
        return parts[0]
    return KMeansResult(
        labels=torch.cat([p.labels for p in parts]),
        centroids=torch.cat([p.centroids for p in parts]),
        inertia=torch.cat([p.inertia for p in parts]),
        iterations=torch.cat([p.iterations for p in parts]),
    )


def _cluster(x, k, metric, max_iter, tol, draws, init) -> KMeansResult:
    """Seeding and Lloyd iterations for one chunk. x: (B, N, D); draws: (B, K, T) or None; init: (B, K, D)
    or None. Items that converge leave the computation; the rest go on with the points of those still active.
    """
    b, n, d = x.shape
    x = x.float()
    if metric == "cosine":
        x = F.normalize(x, dim=-1)
    xt = x.transpose(1, 2)  # (B, D, N), a view: BLAS reads it transposed without a copy
    x_sq = torch.linalg.vector_norm(x, dim=-1).square().unsqueeze(1) if metric == "euclidean" else None
    if init is None:
        centres = _kmeanspp_init(x, xt, k, x_sq, metric, draws)
    else:
        centres = init.to(x).clone()
    # Mean per-dimension variance of each item: (mean squared norm - squared norm of the mean) / D.
    sq = x_sq if x_sq is not None else x.new_ones(b, 1, n)
    variance = (sq.mean((1, 2)) - torch.linalg.vector_norm(x.mean(1), dim=-1).square()) / d
    threshold = tol * variance.clamp_min(0.0)  # (B,)
    iterations = torch.zeros(b, dtype=torch.long, device=x.device)
    active = torch.arange(b, device=x.device)  # the items still iterating
    xa, xta, sqa, previous = x, xt, x_sq, None  # their points (a gathered copy once some have stopped)
    for it in range(1, max_iter + 1):
        c = centres[active]
        own, labels = _distances(xta, c, sqa, metric).min(1)
        same = (labels == previous).all(1) if previous is not None else torch.zeros_like(active, dtype=torch.bool)
        # An unchanged assignment means convergence before this update: its iteration does not count.
        sums, counts = _update(xa, labels, k)
        new = sums / counts.clamp_min(1.0).unsqueeze(-1)
        new = torch.where((counts > 0).unsqueeze(-1), new, c)
        new = _refill_empty(new, counts, xa, own)
        if metric == "cosine":
            new = F.normalize(new, dim=-1)
        new = torch.where(same.view(-1, 1, 1), c, new)
        shift = ((new - c) ** 2).sum((1, 2))  # (A,) summed over centres, as scikit-learn
        centres[active] = new
        iterations[active[~same]] = it
        done = same | (shift <= threshold[active])
        previous = labels
        if bool(done.any()):
            keep = ~done
            active, previous = active[keep], previous[keep]
            if active.numel() == 0:
                break
            xa = x[active]
            xta = xa.transpose(1, 2)
            sqa = None if x_sq is None else x_sq[active]
    own, labels = _distances(xt, centres, x_sq, metric).min(1)
    return KMeansResult(labels=labels, centroids=centres, inertia=own.sum(-1), iterations=iterations.cpu())
