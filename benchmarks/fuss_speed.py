"""FUSS's cost: seconds per round, bytes per client per round against the size of the client's images, and the
server's aggregation time for 100 clients' updates.

1. **A real federation.** ``configs/fuss/synthetic.yaml`` (4 domain clients of 64 scenes at 64 px, the small
   random-weight ViT, 100 local steps) for ``--rounds`` rounds with each of ``--strategies`` (default ``fuss``
   and ``fedavg``), on Flower's simulation engine, through the code ``leafseg fed run`` runs (the config is
   loaded and checked, a ``FussServer`` is built and simulated). The one addition is a meter around the
   server's grid: every message the server sends and every reply it receives is measured as Flower's
   deployment runtime transmits it: the message deflated into its tree of objects (Message, RecordDict,
   ArrayRecord, each Array, its chunks of ``np.save`` bytes, ConfigRecord, MetricRecord), the bytes of every
   object added (each object once, as Flower pushes and pulls them; gRPC framing not counted). The arrays'
   raw values are read back from those bytes (the chunks less the ``.npy`` headers). Seconds per round are
   the server's own (``seconds`` of each ``metrics.jsonl`` row: the clients' training, the aggregation, the
   clients' evaluation and the server's scoring of the global and every client's model), the train exchange
   (send to every client and wait for the last reply) beside them; median over the rounds with the range.
2. **The images.** Each client's bytes per round are set against its images: raw uint8 pixels of the views
   it trains on (N x 3 x S x S, S = ``data.size``) and the image files of its split on disk (PNG).
3. **Aggregation for 100 clients.** 100 replies with the state shapes of ``--agg-config`` (default
   ``configs/fuss/cocostuff27_vits8.yaml``: the paper's ViT-S/8, 70-d codes, 27 centroids; weights random, as
   only shapes matter), random values, 40-80 images each, built as Flower reply messages. Each preset's
   ``FussStrategy.aggregate_train`` (reading and checking every reply, combining, the new record) and the
   pure combination (``strategies.aggregate``) are timed in turn within each repeat after a warm-up; median
   of ``--repeats`` with the range, and the ratio to FedAvg's.

Threads: torch and numpy (threadpoolctl) pinned to ``--threads`` in this process; each client process of the
simulation uses ``local.threads`` (1) and ``federation.actors`` of them run at once (default min(clients,
CPUs)). The last line gives the figures (the bytes: the first strategy's, means over its clients), the
device, the threads and the torch and Flower versions.

    python benchmarks/fuss_speed.py                  # 3 rounds each of fuss and fedavg, 100-client aggregation
    python benchmarks/fuss_speed.py --quick          # a tiny federation (2 clients, 2 rounds): a smoke check
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FED_CONFIG = ROOT / "configs" / "fuss" / "synthetic.yaml"
AGG_CONFIG = ROOT / "configs" / "fuss" / "cocostuff27_vits8.yaml"
AGG_STRATEGIES = ("fedavg", "weighted", "fedcc_maxmin", "fedcc_kmeans", "fuss")
# the quick federation: 2 domains of 8 scenes at 32 px, a 1-block ViT, 3 local steps
QUICK = ["data.size=32", "data.synthetic.domains=2", "data.synthetic.train=8", "data.synthetic.val=4",
         "data.synthetic.size=32", "model.arch_overrides.hidden_size=32", "model.arch_overrides.num_hidden_layers=1",
         "model.arch_overrides.num_attention_heads=2", "model.arch_overrides.intermediate_size=64",
         "model.code_dim=8", "model.clusters=6", "local.steps=3", "local.batch_size=4", "local.knn=2",
         "local.loss.feature_samples=4", "federation.clients=2", "eval.protocol.center_crop=32",
         "eval.protocol.batch_size=8"]


# -- bytes as Flower transmits them ---------------------------------------------------------------------
def npy_values(data: bytes) -> int:
    """Bytes of the values in ``np.save`` output (the data less its header)."""
    import io

    buffer = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(buffer)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    read(buffer)  # moves past the header
    return len(data) - buffer.tell()


def message_bytes(message) -> dict:
    """A message's bytes as Flower's runtime pushes and pulls them: ``total`` (every object of its deflated
    tree once), ``arrays`` (the ArrayRecords' subtrees), ``values`` (the arrays' raw values within those)."""
    from flwr.app import Array
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    objects = get_all_nested_objects(message)
    total = sum(len(obj.deflate()) for obj in objects.values())
    arrays = values = 0
    if message.has_content():
        for record in message.content.array_records.values():
            subtree = get_all_nested_objects(record)
            arrays += sum(len(obj.deflate()) for obj in subtree.values())
            for obj in subtree.values():
                if isinstance(obj, Array):  # its data travels as the chunks' bytes
                    values += npy_values(b"".join(bytes(chunk.data) for _, chunk in obj.slice_array()))
    return {"total": total, "arrays": arrays, "values": values}


class Meter:
    """Bytes of every message through the grid (by client node and message type) and the exchanges' seconds."""

    def __init__(self):
        self.down = defaultdict(list)    # (node, type) -> [bytes dict per message]
        self.up = defaultdict(list)
        self.exchange_seconds = defaultdict(list)   # type -> [seconds per exchange]
        self.own_seconds = 0.0


class MeteredGrid:
    """A Flower grid that measures what passes through ``send_and_receive`` (everything else delegated)."""

    def __init__(self, grid, meter: Meter):
        self._grid, self._meter = grid, meter

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        meter, messages = self._meter, list(messages)
        began = time.perf_counter()
        for m in messages:
            meter.down[(m.metadata.dst_node_id, m.metadata.message_type)].append(message_bytes(m))
        meter.own_seconds += time.perf_counter() - began
        began = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if messages:
            meter.exchange_seconds[messages[0].metadata.message_type].append(time.perf_counter() - began)
        began = time.perf_counter()
        for r in replies:
            meter.up[(r.metadata.src_node_id, r.metadata.message_type)].append(message_bytes(r))
        meter.own_seconds += time.perf_counter() - began
        return replies


# -- 1. the federation ----------------------------------------------------------------------------------
def federate(strategy: str, overrides: list[str], work: Path) -> dict:
    """One simulated run of ``strategy``: its rows, the meter, the server (for its partition and nodes)."""
    from leafseg.config import load_config
    from leafseg.recipes.fuss import simulate
    from leafseg.recipes.fuss.config import FussConfig, check_config
    from leafseg.recipes.fuss.server_app import FussServer

    class MeteredServer(FussServer):
        def serve(self, grid):
            return super().serve(MeteredGrid(grid, meter))

    meter = Meter()
    cfg = load_config(FussConfig, str(FED_CONFIG),
                      [*overrides, f"strategy.name={strategy}", f"data.root={work / 'world'}",
                       f"out_dir={work / strategy}", "progress=false", "echo=false"])
    check_config(cfg)
    server = MeteredServer(cfg, overwrite=True)
    simulate(server)
    fed = server.cfg.federation
    return {"cfg": server.cfg, "rows": server.result["history"], "meter": meter, "nodes": dict(server.strategy.nodes),
            "device": server.device.type, "actors": fed.actors or max(1, min(fed.clients, os.cpu_count() or 1))}


def client_images(cfg, client: int) -> dict:
    """Image count, raw uint8 bytes of its training views (N x 3 x S x S) and its image files' bytes."""
    from leafseg.data.partition import client_file

    lines = [ln.split() for ln in client_file(cfg.partition.dir, client).read_text().splitlines() if ln.strip()]
    files = sum((Path(cfg.data.root) / parts[0]).stat().st_size for parts in lines)
    return {"n": len(lines), "raw": len(lines) * 3 * cfg.data.size ** 2, "files": files}


def per_client_round(run: dict) -> dict:
    """Mean over clients and rounds of the bytes per client per round, with the train messages' parts."""
    meter, rounds = run["meter"], len(run["rows"])
    out = {}
    for node, client in sorted(run["nodes"].items(), key=lambda item: item[1]):
        down = sum(b["total"] for t in ("train", "evaluate") for b in meter.down[(node, t)]) / rounds
        up = sum(b["total"] for t in ("train", "evaluate") for b in meter.up[(node, t)]) / rounds
        out[client] = {"down": down, "up": up, "train_down": meter.down[(node, "train")][-1],
                       "train_up": meter.up[(node, "train")][-1], **client_images(run["cfg"], client)}
    return out


def spread(values, fmt: str = ".2f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def report_federation(name: str, run: dict) -> dict:
    """Print one strategy's rounds and bytes; returns its figures."""
    rows, meter = run["rows"], run["meter"]
    seconds = [float(r["seconds"]) for r in rows]
    train = meter.exchange_seconds["train"]
    clients = per_client_round(run)
    print(f"{name}: {len(rows)} rounds; seconds per round {spread(seconds)} (train exchange {spread(train)}); "
          f"final mIoU {100 * rows[-1]['miou']:.1f}; metering took {meter.own_seconds:.3f} s in all")
    for c, f in clients.items():
        d, u = f["train_down"], f["train_up"]
        print(f"  client {c}: {f['n']} images, raw pixels {f['raw']} B, files {f['files']} B; per round down "
              f"{f['down']:.0f} B, up {f['up']:.0f} B; a train message down {d['total']} B (arrays {d['arrays']}, "
              f"values {d['values']}), its reply {u['total']} B (arrays {u['arrays']}, values {u['values']})")
    total = [f["down"] + f["up"] for f in clients.values()]
    return {"seconds": seconds, "train_seconds": train, "bytes": statistics.mean(total),
            "down": statistics.mean(f["down"] for f in clients.values()),
            "up": statistics.mean(f["up"] for f in clients.values()),
            "values": clients[0]["train_up"]["values"], "reply": clients[0]["train_up"]["total"],
            "raw": statistics.mean(f["raw"] for f in clients.values()),
            "files": statistics.mean(f["files"] for f in clients.values()),
            "n": clients[0]["n"], "clients": len(clients), "device": run["device"], "actors": run["actors"],
            "client_threads": run["cfg"].local.threads}


# -- 3. aggregation for many clients --------------------------------------------------------------------
def state_template(config: Path, overrides: list[str]) -> dict:
    """The initial state (name -> array) of a FUSS config, its encoder drawn with random weights."""
    from leafseg.config import load_config
    from leafseg.recipes.fuss.components import initial_state, make_encoder
    from leafseg.recipes.fuss.config import FussConfig

    cfg = load_config(FussConfig, str(config), ["model.weights=random", *overrides])
    return initial_state(cfg, make_encoder(cfg))


def replies_for(template: dict, clients: int, seed: int = 0) -> tuple[list, list]:
    """``clients`` reply messages (node 1000 + i, client i) with random states of the template's shapes, and
    the same as (state, examples) pairs."""
    from flwr.app import Message, Metadata

    from leafseg.recipes.fuss.messages import content

    rng = np.random.default_rng(seed)
    pairs, messages = [], []
    for c in range(clients):
        state = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in template.items()}
        examples = int(rng.integers(40, 81))
        meta = Metadata(run_id=1, message_id=f"r{c}", src_node_id=1000 + c, dst_node_id=0,
                        reply_to_message_id=f"m{c}", group_id="1", created_at=time.time(), ttl=600.0,
                        message_type="train")
        messages.append(Message(content(arrays=state, metrics={"num-examples": examples, "partition-id": c,
                                                               "loss": 1.0}), metadata=meta))
        pairs.append((state, examples))
    return messages, pairs


def time_aggregation(template: dict, clients: int, repeats: int, restarts: int) -> dict:
    """Seconds of each preset's Flower aggregation and pure combination, in turn per repeat after a warm-up."""
    from leafseg.recipes.fuss.flower_strategy import build_strategy
    from leafseg.recipes.fuss.strategies import aggregate
    from leafseg.recipes.fuss.task import state_shapes

    messages, pairs = replies_for(template, clients)
    strategies = {}
    for name in AGG_STRATEGIES:
        s = build_strategy(name, state_shapes(template), clients=clients, kmeans_restarts=restarts)
        s.nodes = {1000 + c: c for c in range(clients)}
        strategies[name] = s
    tasks = {}
    for name, s in strategies.items():
        tasks[(name, "flower")] = lambda s=s: s.aggregate_train(1, messages)
        tasks[(name, "pure")] = lambda s=s: aggregate(s.exchange, pairs)
    times = {key: [] for key in tasks}
    for fn in tasks.values():
        fn()  # warm-up
    for _ in range(repeats):
        for key, fn in tasks.items():
            began = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - began)
    for s in strategies.values():
        assert len(s.train_outcome.states) == clients and not s.train_outcome.rejected
    return times


def report_aggregation(times: dict, clients: int, template: dict) -> dict:
    values = sum(v.nbytes for v in template.values())
    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in template.items())
    print(f"aggregation of {clients} replies, state {values} B ({shapes}); ms, median with range; "
          f"ratio to fedavg per repeat")
    base = times[("fedavg", "flower")]
    ms = {}
    for name in AGG_STRATEGIES:
        flower, pure = times[(name, "flower")], times[(name, "pure")]
        ratio = [a / b for a, b in zip(flower, base, strict=True)]
        ms[name] = ([t * 1000 for t in flower], ratio)
        print(f"  {name:13s} Flower aggregate_train {spread([t * 1000 for t in flower]):>24s} ms "
              f"(x{spread(ratio)} fedavg's), of which combining {spread([t * 1000 for t in pure])} ms")
    return ms


def pin_threads(n: int):
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    return threadpool_limits(limits=n)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny federation (2 clients, 2 rounds, 3 steps), "
                    "fuss only, the aggregation on the federation's state shapes with 2 repeats: a smoke check")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per federation (default 3; --quick 2)")
    ap.add_argument("--strategies", default="fuss,fedavg", help="strategies federated (default fuss,fedavg)")
    ap.add_argument("--clients", type=int, default=100, help="replies aggregated (default 100)")
    ap.add_argument("--agg-config", default=str(AGG_CONFIG), help="config whose state shapes are aggregated "
                    "(default configs/fuss/cocostuff27_vits8.yaml; --quick: the federation's)")
    ap.add_argument("--repeats", type=int, default=7, help="timed aggregation repeats after a warm-up (default 7)")
    ap.add_argument("--threads", type=int, default=1, help="torch and numpy threads of this process (default 1)")
    args = ap.parse_args(argv)
    limiter = pin_threads(args.threads)  # noqa: F841 - the limits hold while it lives
    import flwr
    import torch

    strategies = ["fuss"] if args.quick else [s.strip() for s in args.strategies.split(",") if s.strip()]
    rounds = 2 if args.quick else args.rounds
    fed = [f"federation.rounds={rounds}", *(QUICK if args.quick else [])]
    with tempfile.TemporaryDirectory(prefix="fuss_speed_") as work:
        runs = {name: report_federation(name, federate(name, fed, Path(work))) for name in strategies}
    first = runs[strategies[0]]
    template = state_template(FED_CONFIG, QUICK) if args.quick else state_template(Path(args.agg_config), [])
    repeats = 2 if args.quick else args.repeats
    ms = report_aggregation(time_aggregation(template, args.clients, repeats, restarts=10), args.clients, template)
    agg_bytes = sum(v.nbytes for v in template.values())
    per_round = "; ".join(f"{n} {spread(r['seconds'])} s" for n, r in runs.items())
    agg = ", ".join(f"{n} {spread(t, '.1f')} ms" for n, (t, _) in ms.items())
    device = (f"{first['device']}, {args.threads} thread(s) here, clients {first['client_threads']} thread each in "
              f"{first['actors']} processes, torch {torch.__version__}, flwr {flwr.__version__}")
    line = (f"fuss_speed [{device}]: {first['clients']} clients x {first['n']} images, {rounds} rounds: seconds per "
            f"round {per_round}; bytes per client per round {first['bytes']:.0f} (down {first['down']:.0f}, up "
            f"{first['up']:.0f}; state {first['values']} B) = x{first['bytes'] / first['raw']:.3f} the client's raw "
            f"uint8 pixels ({first['raw']:.0f} B), x{first['bytes'] / first['files']:.3f} its PNG files "
            f"({first['files']:.0f} B); aggregation of {args.clients} replies of a {agg_bytes} B state, median of "
            f"{repeats}: {agg}")
    print(line)
    return line


if __name__ == "__main__":
    main()
