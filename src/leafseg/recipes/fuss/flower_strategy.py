"""The FUSS exchanges as a Flower 1.41 strategy (``flwr.serverapp.strategy``), a thin layer over the pure
functions of :mod:`leafseg.recipes.fuss.strategies`.

:class:`FussStrategy` extends Flower's FedAvg (its sampling, logging and records), with these differences:

* every known client is asked each round, in client order, and each gets its own start state (the shared
  parts of the global state and the parts it keeps, :func:`~leafseg.recipes.fuss.strategies.client_start`),
  so the server, not the clients, holds everything a resumed run needs;
* each reply is checked (:func:`~leafseg.recipes.fuss.strategies.reply_problem`: an error, missing records,
  other keys or shapes, NaN or Inf, a bad example count) and a bad one is rejected and logged, never
  averaged; a client that does not answer before the timeout is rejected the same way;
* the round goes on with the rest when at least ``min_fraction`` of the clients answered, and fails with
  :class:`~leafseg.recipes.fuss.strategies.RoundFailed` otherwise;
* the aggregation is the :class:`~leafseg.recipes.fuss.strategies.Exchange`'s (FedCC for the centroids).

:func:`build_strategy` makes one for a preset name: ``local_only``, ``fedavg``, ``fedprox``, ``weighted``,
``fedcc_maxmin``, ``fedcc_kmeans``, ``head_only``, ``centroids_only``, ``fuss``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from leafseg.recipes.fuss.messages import ARRAYS, METRICS, NUM_EXAMPLES, PARTITION_ID, content, record_of, state_of
from leafseg.recipes.fuss.strategies import (
    Exchange,
    aggregate,
    check_quorum,
    client_start,
    reply_problem,
    resolve_exchange,
)

__all__ = ["FussStrategy", "RoundOutcome", "build_strategy"]


@dataclass
class RoundOutcome:
    """What one round's replies gave: accepted states, per-client figures, rejected clients and why."""

    states: dict[int, dict] = field(default_factory=dict)        # client -> the state it sent
    examples: dict[int, float] = field(default_factory=dict)
    figures: dict[int, dict] = field(default_factory=dict)       # client -> its train (or evaluate) metrics
    rejected: dict[int, str] = field(default_factory=dict)


class FussStrategy(FedAvg):
    """One FUSS exchange as a Flower strategy (see the module docstring).

    exchange: what happens to the head and the centroids. expected: name -> shape of a valid state.
    clients: how many clients the federation has (None: as many as ``nodes`` names); the quorum is a share
    of them. nodes: node id -> client (partition) id, learnt from the clients' ``query`` replies.
    """

    def __init__(self, exchange: Exchange, expected: dict[str, tuple[int, ...]], *, min_fraction: float = 0.5,
                 clients: int | None = None):
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1, weighted_by_key=NUM_EXAMPLES)
        self.exchange, self.expected, self.min_fraction = exchange, dict(expected), min_fraction
        self.clients = clients
        self.nodes: dict[int, int] = {}
        self.client_states: dict[int, dict] = {}
        self.global_state: dict | None = None
        self.train_outcome = RoundOutcome()
        self.eval_outcome = RoundOutcome()

    def summary(self) -> None:
        e = self.exchange
        log(INFO, "\t├──> FUSS exchange %s: head %s, centroids %s, proximal mu %g", e.name, e.head, e.centroids,
            e.proximal_mu)
        log(INFO, "\t└──> A round needs usable replies from %.0f%% of the clients", 100 * self.min_fraction)

    # -- messages out --------------------------------------------------------------------------
    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, kind: str) -> list[Message]:
        global_state = state_of(arrays)
        values = {**dict(config), "server-round": server_round, "proximal-mu": float(self.exchange.proximal_mu)}
        out = []
        for node, client in sorted(self.nodes.items(), key=lambda item: item[1]):
            start = client_start(self.exchange, global_state, self.client_states.get(client))
            out.append(Message(content(arrays=start, config=values), dst_node_id=node, message_type=kind,
                               group_id=str(server_round)))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One train message per known client, each with its own start state."""
        return self._messages(server_round, arrays, config, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """One evaluate message per known client with the model it ends the round with."""
        return self._messages(server_round, arrays, config, MessageType.EVALUATE)

    # -- replies in ------------------------------------------------------------------------------
    def _sort(self, replies: Iterable[Message], with_arrays: bool) -> RoundOutcome:
        """Accept or reject every reply (and every client that sent none)."""
        outcome = RoundOutcome()
        for msg in replies:
            client = self.nodes.get(msg.metadata.src_node_id)
            if client is None:
                log(WARNING, "FUSS: a reply from unknown node %s was ignored", msg.metadata.src_node_id)
                continue
            problem, state, figures = self._read(msg, with_arrays)
            if problem is None and client in outcome.figures:
                problem = "answered twice"
            if problem is not None:
                outcome.rejected[client] = problem
                continue
            outcome.figures[client] = figures
            outcome.examples[client] = float(figures[NUM_EXAMPLES])
            if with_arrays:
                outcome.states[client] = state
        for client in sorted(set(self._all_clients()) - set(outcome.figures) - set(outcome.rejected)):
            outcome.rejected[client] = ("no reply before the round's timeout" if client in self.nodes.values()
                                        else "not connected (no answer to the server's first query)")
        for client, reason in sorted(outcome.rejected.items()):
            log(WARNING, "FUSS: client %d rejected: %s", client, reason)
        return outcome

    def _all_clients(self) -> list[int]:
        return list(range(self.clients)) if self.clients is not None else sorted(self.nodes.values())

    def _read(self, msg: Message, with_arrays: bool) -> tuple[str | None, dict | None, dict]:
        if msg.has_error():
            return f"error {msg.error.code}: {msg.error.reason}", None, {}
        records = msg.content
        if METRICS not in records.metric_records:
            return "no metrics record", None, {}
        figures = dict(records[METRICS])
        if self.nodes.get(msg.metadata.src_node_id) != figures.get(PARTITION_ID):
            return f"partition-id {figures.get(PARTITION_ID)!r} is not the one it announced", None, figures
        if not with_arrays:
            examples = figures.get(NUM_EXAMPLES)
            ok = isinstance(examples, int | float) and examples > 0
            return (None if ok else f"number of examples {examples!r} is not positive"), None, figures
        if ARRAYS not in records.array_records:
            return "no arrays record", None, figures
        state = state_of(records[ARRAYS])
        return reply_problem(state, figures.get(NUM_EXAMPLES), self.expected), state, figures

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """The new global state from the accepted replies (RoundFailed when too few)."""
        outcome = self._sort(replies, with_arrays=True)
        check_quorum(server_round, len(outcome.states), len(self._all_clients()), self.min_fraction, outcome.rejected)
        self.train_outcome = outcome
        self.client_states.update(outcome.states)
        order = sorted(outcome.states)
        self.global_state = aggregate(self.exchange, [(outcome.states[c], outcome.examples[c]) for c in order])
        return record_of(self.global_state), self._mean_figures(outcome)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord:
        """The example-weighted means of the clients' figures (each client's are kept in ``eval_outcome``)."""
        self.eval_outcome = self._sort(replies, with_arrays=False)
        return self._mean_figures(self.eval_outcome)

    @staticmethod
    def _mean_figures(outcome: RoundOutcome) -> MetricRecord:
        total = sum(outcome.examples.values())
        keys = sorted({k for f in outcome.figures.values() for k, v in f.items()
                       if k not in (NUM_EXAMPLES, PARTITION_ID) and isinstance(v, int | float)})
        return MetricRecord({k: sum(outcome.examples[c] * float(f.get(k, 0.0)) for c, f in outcome.figures.items())
                             / total for k in keys} if total else {})


def build_strategy(name: str, expected: dict[str, tuple[int, ...]], *, head: str | None = None,
                   centroids: str | None = None, proximal_mu: float = 0.001, kmeans_restarts: int = 10,
                   seed: int = 0, min_fraction: float = 0.5, clients: int | None = None) -> FussStrategy:
    """The strategy of preset ``name`` (rules overridable), for states of the ``expected`` shapes."""
    exchange = resolve_exchange(name, head=head, centroids=centroids, proximal_mu=proximal_mu,
                                kmeans_restarts=kmeans_restarts, seed=seed)
    return FussStrategy(exchange, expected, min_fraction=min_fraction, clients=clients)
