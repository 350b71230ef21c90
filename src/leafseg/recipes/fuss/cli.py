"""`leafseg fed ...`: federated runs (FUSS). Building the parser imports nothing heavy (no torch, no Flower);
each verb imports its work when it runs.

    leafseg fed partition synthetic data/fuss_synthetic --scheme domain --clients 4 splits/domain4
    leafseg fed run configs/fuss/synthetic.yaml --clients 4
    leafseg fed run configs/fuss/synthetic.yaml --strategies local_only,fedavg,fuss out_dir=runs/fuss_cmp
    leafseg fed report runs/fuss_cmp/local_only runs/fuss_cmp/fuss --out report_fuss
"""

from __future__ import annotations

import argparse

from leafseg.cli_options import DATASETS, add_out, add_seed, add_split, count, example, intermixed, key_value

__all__ = ["register_cli"]

SCHEMES = ("iid", "dirichlet", "domain")
STRATEGIES = ("local_only", "fedavg", "fedprox", "weighted", "fedcc_maxmin", "fedcc_kmeans", "head_only",
              "centroids_only", "fuss")


def _strategies(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected strategies from {', '.join(STRATEGIES)}, got {text!r}")
    return names


# -- handlers ------------------------------------------------------------------------------------------
def _cmd_partition(args) -> int:
    from leafseg.data.partition import make_partition, write_partition

    part = make_partition(args.dataset, args.root, scheme=args.scheme, clients=args.clients, split=args.split,
                          alpha=args.alpha, seed=args.seed, min_size=args.min_size, options=dict(args.data_option))
    out = write_partition(part, args.out)
    sizes = part.meta["sizes"]
    print(f"wrote {len(sizes)} client split files to {out} ({args.scheme}; images per client: "
          f"{', '.join(map(str, sizes))})")
    for c, names in enumerate(part.meta.get("domains", [])):
        print(f"  client {c}: {', '.join(names)}")
    return 0


def _run_one(args, overrides: list[str]) -> dict:
    import json

    from leafseg.recipes.fuss import run

    result = run(args.config, overrides, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str)}, indent=2, default=str))
    return result


def _cmd_run(args) -> int:
    from leafseg.errors import ConfigError

    if args.overwrite and args.resume:
        raise ConfigError("--overwrite starts the run afresh, so it cannot be combined with --resume")
    overrides = list(args.overrides) + ([f"federation.clients={args.clients}"] if args.clients else [])
    if not args.strategies:
        _run_one(args, overrides)
        return 0
    from pathlib import Path

    from leafseg.config import load_config
    from leafseg.recipes.fuss.config import FussConfig
    from leafseg.recipes.fuss.report import write_fuss_report

    base = Path(load_config(FussConfig, args.config, overrides).out_dir)
    for name in args.strategies:
        _run_one(args, [*overrides, f"strategy.name={name}", f"out_dir={base / name}"])
    page = write_fuss_report([base / name for name in args.strategies], base)
    print(f"report: {page}")
    return 0


def _cmd_report(args) -> int:
    from pathlib import Path

    from leafseg.recipes.fuss.report import write_fuss_report

    for folder in args.runs:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: run folder not found")
    print(f"report: {write_fuss_report(args.runs, args.out)}")
    return 0


# -- the parser ----------------------------------------------------------------------------------------
def _add_partition(verbs) -> None:
    p = intermixed(verbs.add_parser(
        "partition", help="deal a dataset split out to N clients: one split file per client",
        description="Write OUT/client_<i>.txt ('image_relpath mask_relpath' lines, relative to ROOT) and "
                    "OUT/partition.json. Schemes: iid; dirichlet (label skew on each image's dominant class); "
                    "domain (whole Cityscapes cities / synthetic domains per client).",
        **example("leafseg fed partition synthetic data/fuss_synthetic --scheme domain --clients 4 splits/domain4")))
    p.add_argument("dataset", choices=DATASETS, metavar="DATASET", help=f"registry name: {', '.join(DATASETS)}")
    p.add_argument("root", metavar="ROOT", help="dataset root folder")
    p.add_argument("out", metavar="OUT", help="folder for the split files (must not hold a partition)")
    p.add_argument("--scheme", required=True, choices=SCHEMES, help="iid, dirichlet or domain (required)")
    p.add_argument("--clients", type=count(1), required=True, metavar="N", help="number of clients (required)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="Dirichlet concentration of the dirichlet scheme; small: few classes per client (default: 0.5)")
    p.add_argument("--min-size", type=count(1), default=1, metavar="N",
                   help="dirichlet: redraw until every client holds N images (default: 1)")
    add_split(p, "train")
    add_seed(p, "the partition")
    p.add_argument("-o", "--data-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="dataset reader option, values read as YAML (repeatable; default: none)")
    p.set_defaults(func=_cmd_partition)


def _add_run(verbs) -> None:
    p = intermixed(verbs.add_parser(
        "run", help="run FUSS with every client on this machine (Flower's simulation engine)",
        description="Federated label-free segmentation: rounds of local training on each client's images and "
                    "aggregation on the server; per round the global and every client's Hungarian-matched mIoU "
                    "on the shared validation set (metrics.jsonl), a checkpoint, and at the end report.html.",
        **example("leafseg fed run configs/fuss/synthetic.yaml --clients 4 out_dir=runs/fuss")))
    p.add_argument("config", metavar="CONFIG", help="YAML config (see configs/fuss/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. federation.rounds=5")
    p.add_argument("--clients", type=count(1), default=None, metavar="N",
                   help="number of clients (default: the config's federation.clients)")
    p.add_argument("--strategies", type=_strategies, default=None, metavar="A,B,...",
                   help=f"run each of these strategies into OUT_DIR/<name> and write OUT_DIR/report.html comparing "
                        f"them; from {', '.join(STRATEGIES)} (default: the config's strategy.name only)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir from its last round (default: a fresh run)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in out_dir (default: refuse)")
    p.set_defaults(func=_cmd_run)


def _add_report(verbs) -> None:
    p = verbs.add_parser("report", help="compare FUSS runs: mIoU against rounds (PNG + HTML)",
                         **example("leafseg fed report runs/fuss_cmp/local_only runs/fuss_cmp/fuss --out report_fuss"))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="FUSS run folders")
    add_out(p, "fuss_report", what="folder for report.html and miou.png")
    p.set_defaults(func=_cmd_report)


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``fed`` verb group (partition, run, report) to the ``leafseg`` sub-parsers; returns it."""
    fed = subparsers.add_parser("fed", help="federated learning: partitions, FUSS runs on Flower, reports",
                                description="Federated label-free segmentation (FUSS) on Flower.",
                                **example("leafseg fed run configs/fuss/synthetic.yaml --clients 4"))
    verbs = fed.add_subparsers(title="fed verbs", metavar="VERB", required=True)
    _add_partition(verbs)
    _add_run(verbs)
    _add_report(verbs)
    return fed
