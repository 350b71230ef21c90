"""FUSS's claim on a synthetic world of distinct domains: clients that share a STEGO head and centroids
(weighted head averaging + FedCC max-min) segment better than clients that train alone, and better than
plain FedAvg.

Per model seed, on one multi-domain synthetic world (``configs/fuss/synthetic.yaml`` with the settings
below): 6 clients, one per domain (the domain non-iid partition), the same frozen encoder, and every
strategy run through ``leafseg fed run`` on Flower's simulation engine:

* local-only: each client trains alone; its figure is the mean over the clients of their own models;
* FedAvg, FedProx (mu 0.001), FedCC max-min, FedCC k-means, and the FUSS default (weighted head
  averaging + FedCC max-min): the global model after the last round.

Every figure is the Hungarian-matched mIoU (STEGO's protocol, the harness's ``stego`` preset) of the model
on the shared validation set (every domain's validation scenes). No label trains anything.

The frozen encoder is the config's small ViT with random weights, drawn from the config's seed: no encoder
that saw labels is ever used.

Worlds. The multi-domain world of world seed W draws domain k's scenes from generator seed 100 W + k, so the
held-out world (W = 1: seeds 100-105) shares no scene with the development world (W = 0: seeds 0-5).

Verdict protocol (docs/benchmarks.md, ``benchmarks/verdict.py``): any setting is chosen on the development
world (``--world dev``, model seeds 0-2; the settings below were sized for the time budget, not tuned); the
verdicts are read on the held-out world with model seeds 100-102, never from fewer than 3 seeds. A claim
holds when the mean gain exceeds the two strategies' standard deviations over the seeds added.

    python benchmarks/fuss_synthetic.py                  # the verdict: held-out world, 3 fresh seeds
    python benchmarks/fuss_synthetic.py --world dev      # the development world (for choosing settings)
    python benchmarks/fuss_synthetic.py --quick          # tiny sizes, 1 seed, 2 strategies: the pipeline only

The runs go one after another; each simulation runs ``--actors`` client processes at once, one thread each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import add_arguments, describe, resolve, verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fuss" / "synthetic.yaml"
STRATEGIES = {"local_only": "local-only", "fedavg": "FedAvg", "fedprox": "FedProx",
              "fedcc_maxmin": "FedCC max-min", "fedcc_kmeans": "FedCC k-means", "fuss": "FUSS"}
CLAIMS = [("fuss", "local_only", "FUSS > local-only"), ("fuss", "fedavg", "FUSS > FedAvg")]
CLIENTS = 6
# The world and the federation: sized so that 3 seeds of the 6 strategies fit the time budget, not tuned (docs/fuss.md,
# "The synthetic benchmark").
SETTINGS = ["data.synthetic.domains=6", "data.synthetic.train=48", "data.synthetic.val=16",
            f"federation.clients={CLIENTS}", "federation.rounds=4", "local.steps=60",
            "federation.eval_clients=false", "federation.client_eval=false"]
QUICK = ["data.synthetic.train=8", "data.synthetic.val=4", "federation.rounds=2", "local.steps=2",
         "local.batch_size=4"]


def world_overrides(world_seed: int, root: Path) -> list[str]:
    return [f"data.root={root}", f"data.synthetic.seed={100 * world_seed}"]


def one_run(strategy: str, seed: int, args, root: Path) -> dict:
    """One federation: the final round's figures and its seconds per round."""
    from leafseg.recipes.fuss.recipe import run

    overrides = [*SETTINGS, *world_overrides(args.world_seed, root), f"seed={seed}", f"strategy.name={strategy}",
                 f"out_dir={Path(args.out) / f'seed{seed}' / strategy}", f"federation.actors={args.actors}",
                 "local.threads=1", "threads=1", "progress=false", "echo=false",
                 *(QUICK if args.quick else []), *args.set]
    start = time.perf_counter()
    result = run(str(CONFIG), overrides, overwrite=True)
    seconds = time.perf_counter() - start
    return {"miou": 100 * result["final_miou"], "acc": 100 * result["final_acc"],
            "rounds": result["rounds"], "seconds": seconds,
            "by_round": [None if r.get("miou") is None else 100 * r["miou"] for r in result["history"]]}


def prepare_world(args, root: Path) -> None:
    """Write the world once, before the runs (the same folder serves every run)."""
    from leafseg.config import load_config
    from leafseg.recipes.fuss.config import FussConfig

    cfg = load_config(FussConfig, CONFIG, [*SETTINGS, *world_overrides(args.world_seed, root),
                                           *(QUICK if args.quick else []), *args.set])
    cfg.data.synthetic.ensure(cfg.data.root)


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help=f"comma-separated, from {', '.join(STRATEGIES)} (default: all)")
    ap.add_argument("--actors", type=int, default=2, help="client processes at once in each simulation")
    ap.add_argument("--out", default=None, help="folder for the world and the runs "
                                                "(default runs/bench_fuss/world<W>)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one seed, local-only and FUSS")
    args = ap.parse_args(argv)
    args.world_seed, seeds = resolve(args)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if args.quick:
        seeds, strategies = seeds[:1], [s for s in strategies if s in ("local_only", "fuss")] or strategies[:1]
    args.seeds = seeds
    args.out = args.out or f"runs/bench_fuss/world{args.world_seed}{'_quick' if args.quick else ''}"
    root = Path(args.out) / "world"
    print(f"fuss_synthetic on the {describe(args)}, {CLIENTS} domain clients, strategies {', '.join(strategies)}"
          f"{', QUICK' if args.quick else ''}", flush=True)
    prepare_world(args, root)

    start = time.perf_counter()
    rows: dict[int, dict[str, dict]] = {s: {} for s in seeds}
    for seed in seeds:
        for strategy in strategies:
            rows[seed][strategy] = row = one_run(strategy, seed, args, root)
            print(f"seed {seed} {strategy}: mIoU {row['miou']:.1f} (by round "
                  + ", ".join("-" if m is None else f"{m:.1f}" for m in row["by_round"])
                  + f"), acc {row['acc']:.1f}, {row['seconds']:.0f} s", flush=True)
    minutes = (time.perf_counter() - start) / 60

    print("| seed | " + " | ".join(STRATEGIES[s] for s in strategies) + " |")
    print("|---" * (len(strategies) + 1) + "|")
    for seed in seeds:
        print(f"| {seed} | " + " | ".join(f"{rows[seed][s]['miou']:.1f}" for s in strategies) + " |")
    figures = {s: [rows[seed][s]["miou"] for seed in seeds] for s in strategies}
    claims = [verdict(label, figures[a], figures[b], args) for a, b, label in CLAIMS
              if a in figures and b in figures]
    (Path(args.out) / "fuss_synthetic.json").write_text(json.dumps(
        {"world": args.world, "world_seed": args.world_seed, "seeds": seeds, "settings": SETTINGS,
         "overrides": args.set, "quick": args.quick, "rows": rows, "verdicts": claims, "minutes": minutes},
        indent=1))
    summary = ", ".join(f"{STRATEGIES[s]} {mean_sd(figures[s])}" for s in strategies)
    print(f"fuss_synthetic (Hungarian mIoU %, {describe(args)}, {CLIENTS} domain clients"
          f"{', QUICK' if args.quick else ''}): {summary} | {' | '.join(claims) or 'no claim compared'} | "
          f"device cpu ({args.actors} client processes x 1 thread, torch {torch.__version__}) | {minutes:.1f} min")


if __name__ == "__main__":
    main()
