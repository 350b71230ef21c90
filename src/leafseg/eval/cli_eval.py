"""Score a method on a dataset: mIoU and pixel accuracy under a published protocol (`leafseg eval METHOD
DATASET ROOT`).

    leafseg eval maskclip voc data/VOCdevkit --preset sclip-family --backbone clip_vitb16 \\
        --out runs/maskclip_voc pamr=true
    leafseg eval proxyclip voc data/VOCdevkit --option vfm=dino_vitb8
    leafseg eval kmeans synthetic synth --backbone pixels8 --preset stego labelling=oracle

Without --preset, SCLIP, ClearCLIP, NACLIP and ProxyCLIP are scored under sclip-family (the harness
they were published in), grouping_clip under groupvit (the harness of the figures its paper compares
with) and every other method under default; every method runs with it. A cluster method (kmeans) is
scored with labelling=hungarian when the protocol leaves labelling at none; labelling=oracle scores its
per-image regions instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Only light imports here: the harness, methods and datasets are imported when the verb runs.
from leafseg.cli_options import (
    DATASETS,
    METHOD_PRESETS,
    METHODS,
    PRESETS,
    add_backbone,
    add_device,
    add_method_option,
    add_out,
    add_quiet,
    add_skip_bad,
    add_split,
    add_weights,
    check_device,
    count,
    example,
    intermixed,
    key_value,
)
from leafseg.errors import ConfigError

__all__ = ["add_eval_arguments", "register_cli", "run_eval"]


def _preset_defaults() -> str:
    """"sclip-family for sclip, clearclip, ...; groupvit for grouping_clip": the presets of METHOD_PRESETS."""
    methods: dict[str, list[str]] = {}
    for method, preset in METHOD_PRESETS.items():
        methods.setdefault(preset, []).append(method)
    return "; ".join(f"{preset} for {', '.join(names)}" for preset, names in methods.items())


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``leafseg eval`` (for embedding the verb in another parser)."""
    p.add_argument("method", choices=METHODS, metavar="METHOD", help=f"one of: {', '.join(METHODS)}")
    p.add_argument("dataset", choices=DATASETS, metavar="DATASET", help=f"registry name: {', '.join(DATASETS)}")
    p.add_argument("root", metavar="ROOT", help="dataset root folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="protocol overrides, before or after the options, e.g. short_side=336 pamr=true")
    p.add_argument("--preset", default=None,
                   help=f"protocol preset ({', '.join(PRESETS)}) or a YAML file (default: "
                        f"{_preset_defaults()}, else default)")
    add_split(p, "val")
    add_backbone(p, None, note="; maskclip, sclip, clearclip, naclip, proxyclip, grouping_clip: clip_*; kmeans: "
                               "dino_vits8 or pixels8")
    add_weights(p, None, note=", or for method 'model' a recipe checkpoint")
    add_method_option(p)
    p.add_argument("--data-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="dataset reader option, as for `leafseg data check -o`, e.g. classes=[sky,road] "
                        "(repeatable; default: none)")
    p.add_argument("--names", metavar="FILE",
                   help="text file with one class entry per line (synonyms comma-separated) used as prompts "
                        "(default: the dataset's class names)")
    add_out(p, None, shown="runs/eval/<method>_<dataset>")
    p.add_argument("--save-predictions", action="store_true",
                   help="also write predictions/<name>.png label maps (default: no)")
    p.add_argument("--overlays", type=count(0), default=4, metavar="N",
                   help="number of overlay pictures (default: 4)")
    add_skip_bad(p)
    add_device(p)
    add_quiet(p)
    return p


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` verb to the ``leafseg`` sub-parsers; returns its parser."""
    p = subparsers.add_parser("eval", help="evaluate a method on a benchmark under a named protocol",
                              description=__doc__, **example("leafseg eval kmeans synthetic synth --backbone pixels8"))
    add_eval_arguments(intermixed(p))  # KEY=VALUE overrides before or after the options
    p.set_defaults(func=run_eval)
    return p


def _open_dataset(name: str, root: str, split: str, skip_bad: bool, options: dict):
    from leafseg.data.datasets import build_dataset

    return build_dataset(name, root, split=split, on_error="skip" if skip_bad else "stop", **options)


def _read_names(path: str | None) -> list[str] | None:
    """The class entries of the ``--names`` file, one per non-empty line."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"--names {path}: file not found")
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def cluster_labelling(method, protocol):
    """(protocol, note): a cluster method under a protocol that leaves ``labelling`` at "none" is scored
    with Hungarian labelling, so that every method runs with the default preset; note says so (None when
    nothing changed). The harness itself still refuses a cluster method without a labelling."""
    if getattr(method, "outputs", "logits") != "clusters" or protocol.labelling != "none":
        return protocol, None
    return protocol.with_overrides({"labelling": "hungarian"}), (
        f"note: {type(method).__name__} outputs cluster ids and protocol {protocol.name!r} sets no labelling, "
        "so clusters are matched to classes with labelling=hungarian (labelling=oracle scores per-image regions)")


def run_eval(args) -> int:
    """Run one evaluation from parsed arguments; prints the summary and the output folder."""
    from leafseg.eval.harness import evaluate
    from leafseg.eval.methods import build_method
    from leafseg.eval.protocol import load_protocol

    check_device(args.device)  # the cheap checks first, before a dataset is scanned or a model loaded
    if args.preset is None:
        args.preset = METHOD_PRESETS.get(args.method, "default")
    protocol = load_protocol(args.preset, args.dataset, args.overrides)
    names = _read_names(args.names)
    dataset = _open_dataset(args.dataset, args.root, args.split, args.skip_bad, dict(args.data_option))
    if names is not None and len(names) != len(dataset.classes):
        raise ConfigError(f"--names {args.names}: {len(names)} class entries, but {args.dataset} has "
                          f"{len(dataset.classes)} classes")
    method = build_method(args.method, backbone=args.backbone, weights=args.weights, device=args.device,
                          **dict(args.option))
    protocol, note = cluster_labelling(method, protocol)
    if note:
        print(note)
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{args.method}_{args.dataset}"
    config = {"method": args.method, "dataset": args.dataset, "root": str(args.root), "split": args.split,
              "data_options": dict(args.data_option),
              "backbone": args.backbone, "weights": args.weights, "options": dict(args.option),
              "preset": args.preset, "overrides": list(args.overrides)}
    if note:
        config["note"] = note
    report = evaluate(method, dataset, protocol, out_dir=out, progress=not args.quiet, device=args.device,
                      save_predictions=args.save_predictions, num_overlays=args.overlays,
                      class_names=names, skip_bad=args.skip_bad, method_name=args.method, config=config)
    print(report.summary())
    if report.skipped:
        print(f"skipped {len(report.skipped)} bad samples:", *report.skipped, sep="\n  ")
    print(f"report: {out / 'metrics.json'}")
    return 0
