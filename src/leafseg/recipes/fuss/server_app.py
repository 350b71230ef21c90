"""FUSS's server: the rounds, on the shared run engine, behind a Flower ServerApp.

Per round (:meth:`FussServer.round`): every client gets its start state and trains; the strategy checks
the replies and combines the accepted ones (:mod:`leafseg.recipes.fuss.flower_strategy`); the clients
score the new model on their own images (Flower's evaluate); the server scores the global model and
every client's own model on the shared validation set through the harness (Hungarian-matched mIoU and
pixel accuracy); the row goes to ``metrics.jsonl`` (a line is echoed), the losses to ``train_log.jsonl``,
and the global state, every client's state and the run state to ``checkpoints/last.pt`` (atomic). A run
killed at any point resumes (``--resume``) at the round after its last checkpoint and ends as an
uninterrupted run would: clients hold nothing between rounds, and every draw is seeded by the run's seed,
the round and the client.

``app`` is the ServerApp a SuperLink runs (``flwr run``); its run config names the FUSS config::

    flwr run configs/fuss/app <connection> --run-config "config='/abs/configs/fuss/synthetic.yaml' \\
        overrides='federation.rounds=3' resume=false overwrite=false"

On one machine :func:`leafseg.recipes.fuss.run` builds the same server and runs it on Flower's simulation
engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from leafseg.config import config_dict, dump_config
from leafseg.errors import UserError
from leafseg.recipes.fuss.components import (
    exchange_of,
    initial_state,
    make_encoder,
    segmenter_from_state,
    validation_set,
)
from leafseg.recipes.fuss.config import FussConfig
from leafseg.recipes.fuss.flower_strategy import FussStrategy
from leafseg.recipes.fuss.messages import METRICS, PARTITION_ID, SETTINGS, content, record_of
from leafseg.recipes.fuss.strategies import client_start
from leafseg.recipes.fuss.task import state_shapes
from leafseg.training import Run, export_weights, init_distributed

EXTRA_OUTPUTS = ("partition", "clients", "report.html", "miou.png")

__all__ = ["EXTRA_OUTPUTS", "FussServer", "app", "prepare_data"]


def prepare_data(cfg: FussConfig, out: Path) -> FussConfig:
    """Write the synthetic world (when asked) and the partition (when none is given: to ``out/partition``,
    once); returns the config with ``partition.dir`` set to the folder used."""
    from leafseg.data.partition import make_partition, read_partition, write_partition

    if cfg.data.synthetic is not None:
        cfg.data.synthetic.ensure(cfg.data.root)
    folder = Path(cfg.partition.dir) if cfg.partition.dir else out / "partition"
    if cfg.partition.dir is None and not (folder / "partition.json").is_file():
        p = cfg.partition
        write_partition(make_partition(cfg.data.dataset, cfg.data.root, scheme=p.scheme, clients=cfg.federation.clients,
                                       split=cfg.data.split, alpha=p.alpha, seed=p.seed, options=cfg.data.options),
                        folder)
    meta = read_partition(folder)
    if int(meta["clients"]) != cfg.federation.clients or meta["dataset"] != cfg.data.dataset:
        raise UserError(f"{folder}: a partition of {meta['dataset']} for {meta['clients']} clients, but the run has "
                        f"{cfg.federation.clients} clients of {cfg.data.dataset}")
    return replace(cfg, partition=replace(cfg.partition, dir=str(folder.resolve())))


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


class FussServer:
    """One FUSS run: the run folder and engine, the frozen encoder and validation set, the strategy."""

    def __init__(self, cfg: FussConfig, *, resume: bool | str = False, overwrite: bool = False):
        info = init_distributed(cfg.device)
        self.run = Run("fuss", cfg, info, resume=resume, overwrite=overwrite, extra_outputs=EXTRA_OUTPUTS)
        try:
            self.cfg = self.run.cfg = prepare_data(cfg, self.run.out)
            self.device = info.device
            self.encoder = make_encoder(self.cfg, self.device)
            self.val = validation_set(self.cfg)
            self.protocol = self.cfg.eval.resolve(self.cfg.data.dataset)
            init = initial_state(self.cfg, self.encoder)
            self.strategy = FussStrategy(exchange_of(self.cfg), state_shapes(init),
                                         min_fraction=self.cfg.federation.min_fraction,
                                         clients=self.cfg.federation.clients)
            self.strategy.global_state = init
            self.run.restore(load_model=self._restore)
        except BaseException:
            self.run.close()
            raise
        self.result: dict | None = None

    def _restore(self, model: dict) -> None:
        ckpt = self.run.read_checkpoint()
        self.strategy.global_state = {k: v.cpu().numpy() for k, v in model.items()}
        clients = (ckpt.get("extra") or {}).get("clients", {})
        self.strategy.client_states = {int(c): {k: v.cpu().numpy() for k, v in s.items()} for c, s in clients.items()}

    @property
    def settings(self) -> str:
        """The resolved config as the clients receive it."""
        return dump_config(self.cfg)

    # -- the run -----------------------------------------------------------------------------------
    def serve(self, grid: Grid) -> dict:
        """All remaining rounds on ``grid``; returns the run's result (also in ``self.result``)."""
        run, fed = self.run, self.cfg.federation
        try:
            run.save_protocol(self.protocol)
            run.start(fed.rounds)
            self.discover(grid)
            for server_round in range(run.state.iteration + 1, fed.rounds + 1):
                self.round(grid, server_round)
                if run.stop_requested():
                    self.result = run.stopped()
                    return self.result
            self.result = self.finish()
            return self.result
        except BaseException:
            run.close()
            raise

    def discover(self, grid: Grid) -> None:
        """Wait for the clients to connect, ask each which client it is (``query``)."""
        fed = self.cfg.federation
        deadline = time.monotonic() + fed.start_timeout
        while len(nodes := sorted(grid.get_node_ids())) < fed.clients:
            if time.monotonic() > deadline:
                raise UserError(f"only {len(nodes)} of {fed.clients} clients connected within "
                                f"federation.start_timeout = {fed.start_timeout:g} s")
            time.sleep(0.5)
        asked = [Message(content(config={SETTINGS: self.settings}), dst_node_id=n, message_type=MessageType.QUERY)
                 for n in nodes]
        found: dict[int, int] = {}
        for reply in grid.send_and_receive(asked, timeout=max(1.0, deadline - time.monotonic())):
            if reply.has_error():
                print(f"fuss: node {reply.metadata.src_node_id} could not start: {reply.error.reason}", flush=True)
                continue
            pid = int(reply.content[METRICS][PARTITION_ID])
            if not 0 <= pid < fed.clients or pid in found.values():
                raise UserError(f"node {reply.metadata.src_node_id} says it is client {pid}: each of the "
                                f"{fed.clients} clients needs its own partition-id in 0..{fed.clients - 1}")
            found[reply.metadata.src_node_id] = pid
        if len(found) < fed.min_fraction * fed.clients:
            raise UserError(f"only {len(found)} of {fed.clients} clients answered (federation.min_fraction = "
                            f"{fed.min_fraction:g}); see the clients' errors above")
        self.strategy.nodes = found

    def round(self, grid: Grid, server_round: int) -> dict:
        """Train, combine, score, log and checkpoint one round; returns its metrics row."""
        fed, strategy, began = self.cfg.federation, self.strategy, time.perf_counter()
        config = ConfigRecord({SETTINGS: self.settings, "seed": int(self.cfg.seed)})
        sent = strategy.configure_train(server_round, record_of(strategy.global_state), config, grid)
        replies = grid.send_and_receive(sent, timeout=fed.round_timeout)
        arrays, train_figures = strategy.aggregate_train(server_round, replies)
        if fed.client_eval:
            asked = strategy.configure_evaluate(server_round, arrays, config, grid)
            strategy.aggregate_evaluate(server_round, grid.send_and_receive(asked, timeout=fed.round_timeout))
        row = self._score(server_round, dict(train_figures), time.perf_counter() - began)
        self._record(server_round, row, train_figures)
        return row

    def _evaluate(self, state: dict) -> tuple[float, float]:
        from leafseg.eval.harness import evaluate

        method = segmenter_from_state(self.cfg, self.encoder, state)
        report = evaluate(method, self.val, self.protocol, progress=False, device=self.device, method_name="fuss")
        return report.miou, report.acc

    def _score(self, server_round: int, train: dict, seconds: float) -> dict:
        """The round's row: the global model and every client's trained model on the validation set, the
        clients' own figures, who answered and who was rejected."""
        n, strategy, fed = self.cfg.federation.clients, self.strategy, self.cfg.federation
        outcome = strategy.train_outcome
        federated = strategy.exchange.federated
        clients = [None] * n
        if fed.eval_clients or not federated:
            for c, state in sorted(outcome.states.items()):
                clients[c] = self._evaluate(state)
        miou_each = [c[0] if c else None for c in clients]
        acc_each = [c[1] if c else None for c in clients]
        global_miou, global_acc = self._evaluate(strategy.global_state) if federated else (None, None)
        local = strategy.eval_outcome.figures if fed.client_eval else {}
        row = {"iteration": server_round, "round": server_round,
               "miou": global_miou if federated else _mean(miou_each),
               "acc": global_acc if federated else _mean(acc_each),
               "global_miou": global_miou, "global_acc": global_acc, "clients_miou_mean": _mean(miou_each),
               "clients_miou": miou_each, "clients_acc": acc_each,
               "clients_local_miou": [local.get(c, {}).get("local_miou") for c in range(n)],
               "clients_local_acc": [local.get(c, {}).get("local_acc") for c in range(n)],
               "clients_probe_loss": [local.get(c, {}).get("probe_loss") for c in range(n)],
               "answered": len(outcome.states), "rejected": {str(c): r for c, r in sorted(outcome.rejected.items())},
               "strategy": strategy.exchange.name, "loss": train.get("loss"), "seconds": seconds}
        return row

    def _record(self, server_round: int, row: dict, train_figures) -> None:
        run = self.run
        run.state.iteration = server_round
        parts = {k: torch.tensor(float(v)) for k, v in dict(train_figures).items() if k != "seconds"}
        run.step_done(parts or {"loss": torch.tensor(float("nan"))}, {},
                      int(sum(self.strategy.train_outcome.examples.values())), self.cfg.federation.rounds)
        run.log_eval(row)
        if row["miou"] is not None and row["miou"] > run.state.best.get("miou", -1.0):
            run.state.best = {"miou": row["miou"], "round": server_round}
        clients = {str(c): _tensors(s) for c, s in sorted(self.strategy.client_states.items())}
        run.save(model=_tensors(self.strategy.global_state), extra={"clients": clients})

    def finish(self) -> dict:
        """Export the global model (``final.safetensors``) and, for strategies where clients keep parts,
        each client's own (``clients/client_<i>.safetensors``); write the report; close the run."""
        from leafseg.recipes.fuss.report import write_fuss_report

        out, strategy = self.run.out, self.strategy
        meta = {"strategy": strategy.exchange.name, "classes": list(self.val.classes)}
        if self.run.info.is_main:
            export_weights(out / "final.safetensors", _tensors(strategy.global_state), recipe="fuss",
                           config=config_dict(self.cfg), extra=meta)
            if any(not strategy.exchange.shared(k) for k in strategy.global_state):
                for c, own in sorted(strategy.client_states.items()):
                    export_weights(out / "clients" / f"client_{c:03d}.safetensors",
                                   _tensors(client_start(strategy.exchange, strategy.global_state, own)),
                                   recipe="fuss", config=config_dict(self.cfg), extra={**meta, "client": c})
            write_fuss_report([out], out)
        history = self.run.state.history
        last = history[-1] if history else {}
        result = {"final_miou": last.get("miou"), "final_acc": last.get("acc"),
                  "best_miou": self.run.state.best.get("miou"), "rounds": self.run.state.iteration,
                  "strategy": strategy.exchange.name, "out_dir": str(out), "history": history}
        return self.run.finish(result)


# -- the ServerApp of a deployment (`flwr run`) -----------------------------------------------------------
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the FUSS config named by the run config (``config``, ``overrides``, ``resume``, ``overwrite``) and
    run every round."""
    import shlex

    from leafseg.config import load_config
    from leafseg.recipes.fuss.config import check_config

    rc = context.run_config
    if not rc.get("config"):
        raise UserError("the run config needs config='<path of a FUSS config>' (flwr run ... --run-config)")
    cfg = load_config(FussConfig, str(rc["config"]), shlex.split(str(rc.get("overrides", ""))))
    check_config(cfg)
    server = FussServer(cfg, resume=bool(rc.get("resume", False)), overwrite=bool(rc.get("overwrite", False)))
    result = server.serve(grid)
    print(f"fuss: {result.get('rounds', result.get('stopped_at'))} rounds, results in {server.run.out}", flush=True)
