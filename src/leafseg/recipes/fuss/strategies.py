"""How the server combines the clients' replies: pure functions over (state dict, number of examples) pairs,
without Flower (the Flower strategy in :mod:`leafseg.recipes.fuss.flower_strategy` calls these).

A state is ``{"head.<name>": array, ..., "centroids": (K, D) array}`` (:mod:`leafseg.recipes.fuss.task`).
An :class:`Exchange` says what happens to each part:

* head rule: ``keep`` (each client keeps its own), ``mean`` (plain mean), ``weighted`` (weighted by the
  clients' numbers of examples);
* centroid rule: the same three, or FedCC, global centroid clustering: every client's K centroids are
  stacked ((N*K) x D) and reduced back to K, by ``maxmin`` (farthest-point selection by cosine distance,
  deterministic, starting from client 0's first centroid) or ``kmeans`` (spherical k-means with restarts,
  the best of them kept). FedCC's centroids replace the averaged ones.

The presets (``strategy.name``) are the strategies FUSS compares; FUSS itself is weighted head averaging with
FedCC max-min centroids:

=================  ==========  ============  ============
preset             head        centroids     proximal mu
=================  ==========  ============  ============
local_only         keep        keep          0
fedavg             mean        mean          0
fedprox            mean        mean          strategy.proximal_mu (0.001)
weighted           weighted    weighted      0
fedcc_maxmin       mean        maxmin        0
fedcc_kmeans       mean        kmeans        0
head_only          weighted    keep          0
centroids_only     keep        maxmin        0
fuss               weighted    maxmin        0
=================  ==========  ============  ============

A kept part is never sent back: each client starts the next round from its own (:func:`client_start`). The
server's global state still holds one for scoring: the client-size-weighted mean of the kept head, or the
FedCC max-min reduction of the kept centroids (averaging centroids that nobody aligned means little).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from leafseg.errors import ConfigError, UserError

CENTROIDS = "centroids"
HEAD_RULES = ("keep", "mean", "weighted")
CENTROID_RULES = ("keep", "mean", "weighted", "maxmin", "kmeans")

Reply = tuple[dict, float]  # (state, number of examples)

__all__ = ["CENTROIDS", "CENTROID_RULES", "Exchange", "HEAD_RULES", "PRESETS", "RoundFailed", "aggregate",
           "check_quorum", "client_start", "fedcc_kmeans", "fedcc_maxmin", "mean_state", "reply_problem",
           "resolve_exchange"]


class RoundFailed(UserError):
    """Too few clients gave a usable reply in a round; the run stops (its last checkpoint can be resumed)."""


@dataclass(frozen=True)
class Exchange:
    """What the server does with each part of the replies (see the module docstring)."""

    name: str
    head: str
    centroids: str
    proximal_mu: float = 0.0
    kmeans_restarts: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.head not in HEAD_RULES or self.centroids not in CENTROID_RULES:
            raise ConfigError(f"strategy {self.name}: head rule must be one of {HEAD_RULES} and centroid rule one of "
                              f"{CENTROID_RULES}, got {self.head!r} / {self.centroids!r}")

    @property
    def federated(self) -> bool:
        """Whether anything is shared (local_only shares nothing)."""
        return self.head != "keep" or self.centroids != "keep"

    def shared(self, key: str) -> bool:
        """Whether state entry ``key`` is sent back to the clients."""
        return (self.centroids if key == CENTROIDS else self.head) != "keep"


PRESETS: dict[str, Exchange] = {e.name: e for e in (
    Exchange("local_only", "keep", "keep"),
    Exchange("fedavg", "mean", "mean"),
    Exchange("fedprox", "mean", "mean", proximal_mu=0.001),
    Exchange("weighted", "weighted", "weighted"),
    Exchange("fedcc_maxmin", "mean", "maxmin"),
    Exchange("fedcc_kmeans", "mean", "kmeans"),
    Exchange("head_only", "weighted", "keep"),
    Exchange("centroids_only", "keep", "maxmin"),
    Exchange("fuss", "weighted", "maxmin"),
)}


def resolve_exchange(name: str, *, head: str | None = None, centroids: str | None = None,
                     proximal_mu: float = 0.001, kmeans_restarts: int = 10, seed: int = 0) -> Exchange:
    """Preset ``name`` with its rules overridden where given; mu applies to ``fedprox`` only."""
    if name not in PRESETS:
        raise ConfigError(f"unknown strategy {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return replace(preset, head=head or preset.head, centroids=centroids or preset.centroids,
                   proximal_mu=proximal_mu if preset.proximal_mu else 0.0, kmeans_restarts=kmeans_restarts,
                   seed=seed)


# -- reductions ------------------------------------------------------------------------------------
def _weights(replies: Sequence[Reply], weighted: bool) -> np.ndarray:
    w = np.array([float(n) if weighted else 1.0 for _, n in replies], dtype=np.float64)
    if not len(w) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"need positive weights to average, got {w.tolist()}")
    return w / w.sum()


def mean_state(replies: Sequence[Reply], keys: Sequence[str], weighted: bool) -> dict[str, np.ndarray]:
    """The (example-weighted, or plain) mean of entries ``keys`` over the replies, accumulated in float64
    and returned in each entry's dtype."""
    w = _weights(replies, weighted)
    out = {}
    for key in keys:
        first = np.asarray(replies[0][0][key])
        total = sum(wi * np.asarray(state[key], dtype=np.float64) for wi, (state, _) in zip(w, replies, strict=True))
        out[key] = np.asarray(total, dtype=first.dtype)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fedcc_maxmin(centroids: Sequence[np.ndarray], k: int | None = None) -> np.ndarray:
    """FedCC by max-min (farthest point): stack the clients' (K, D) centroids in client order, start from
    client 0's first centroid, and repeatedly add the centroid whose cosine distance to the nearest one
    chosen so far is largest (ties: the lowest index). Returns the chosen centroids, (k, D), in the order
    chosen, as given (not normalised). ``k`` defaults to K."""
    stack = np.concatenate([np.asarray(c) for c in centroids])
    k = k or np.asarray(centroids[0]).shape[0]
    if not 1 <= k <= len(stack):
        raise ValueError(f"cannot choose {k} centroids out of {len(stack)}")
    unit = _unit(stack)
    chosen = [0]
    nearest = 1.0 - unit @ unit[0]
    for _ in range(1, k):
        nearest[chosen] = -np.inf
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - unit @ unit[pick])
    return stack[chosen].astype(np.asarray(centroids[0]).dtype)


def fedcc_kmeans(centroids: Sequence[np.ndarray], k: int | None = None, *, restarts: int = 10, seed: int = 0,
                 max_iter: int = 100) -> np.ndarray:
    """FedCC by k-means: spherical k-means of the stacked clients' centroids into ``k`` (default K) centres,
    ``restarts`` seeded k-means++ starts clustered at once (:func:`leafseg.grouping.batched_kmeans`, each
    start its own stream of draws, spawned from ``seed``); the start with the smallest inertia wins. Returns
    unit-norm (k, D) centres."""
    import torch

    from leafseg.grouping.kmeans import batched_kmeans

    stack = np.concatenate([np.asarray(c) for c in centroids])
    k = k or np.asarray(centroids[0]).shape[0]
    points = torch.from_numpy(_unit(stack)).float().expand(restarts, -1, -1).contiguous()
    streams = np.random.SeedSequence(seed).generate_state(restarts).astype(np.int64)
    result = batched_kmeans(points, k, metric="cosine", max_iter=max_iter, item_seeds=torch.from_numpy(streams),
                            chunk_size=restarts)
    best = int(torch.argmin(result.inertia))
    return result.centroids[best].numpy().astype(np.asarray(centroids[0]).dtype)


def _centroids(rule: str, replies: Sequence[Reply], exchange: Exchange) -> np.ndarray:
    own = [np.asarray(state[CENTROIDS]) for state, _ in replies]
    if rule in ("mean", "weighted"):
        return mean_state(replies, [CENTROIDS], weighted=rule == "weighted")[CENTROIDS]
    if rule == "kmeans":
        return fedcc_kmeans(own, restarts=exchange.kmeans_restarts, seed=exchange.seed)
    return fedcc_maxmin(own)  # maxmin, and the scoring stand-in for kept centroids


def aggregate(exchange: Exchange, replies: Sequence[Reply]) -> dict[str, np.ndarray]:
    """The global state from the accepted replies (``replies``: (state, examples), in client order).
    Kept parts get their scoring stand-in (see the module docstring)."""
    if not replies:
        raise ValueError("no replies to aggregate")
    keys = list(replies[0][0])
    head_keys = [k for k in keys if k != CENTROIDS]
    head = mean_state(replies, head_keys, weighted=exchange.head != "mean")
    return {**head, CENTROIDS: _centroids(exchange.centroids, replies, exchange)}


def client_start(exchange: Exchange, global_state: dict, own: dict | None) -> dict:
    """The state a client starts a round from: the shared parts of the global state, and its own kept
    parts (the global ones before it has any)."""
    if own is None:
        return dict(global_state)
    return {k: (v if exchange.shared(k) else own[k]) for k, v in global_state.items()}


def reply_problem(state: dict, examples, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why a reply cannot be aggregated (None when it can): other keys than ``expected`` (name -> shape),
    a wrong shape, a non-float array, NaN or Inf values, or a number of examples that is not a positive
    finite number."""
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        return f"wrong keys (missing {missing}, unexpected {extra})"
    for key, shape in expected.items():
        value = np.asarray(state[key])
        if tuple(value.shape) != tuple(shape):
            return f"{key}: shape {tuple(value.shape)}, expected {tuple(shape)}"
        if not np.issubdtype(value.dtype, np.floating):
            return f"{key}: dtype {value.dtype}, expected floating point"
        if not np.all(np.isfinite(value)):
            return f"{key}: NaN or Inf values"
    if isinstance(examples, bool) or not isinstance(examples, int | float) or not math.isfinite(examples) \
            or examples <= 0:
        return f"number of examples {examples!r} is not a positive number"
    return None


def check_quorum(server_round: int, accepted: int, expected: int, min_fraction: float,
                 rejected: dict[int, str]) -> None:
    """Raise :class:`RoundFailed` unless ``accepted`` of ``expected`` clients is at least ``min_fraction``;
    the message names every rejected client and why."""
    if expected and accepted >= min_fraction * expected:
        return
    reasons = "; ".join(f"client {c}: {r}" for c, r in sorted(rejected.items())) or "no client answered"
    raise RoundFailed(f"round {server_round}: {accepted} of {expected} clients gave a usable reply, fewer than "
                      f"federation.min_fraction = {min_fraction:g} of them ({reasons}). The last checkpoint holds "
                      f"round {server_round - 1}; fix the clients and resume with --resume")
