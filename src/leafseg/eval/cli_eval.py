"""`leafseg eval METHOD DATASET ROOT`: parse, build, dispatch to :func:`leafseg.eval.harness.evaluate`.

    leafseg eval maskclip voc data/VOCdevkit --preset sclip-family --backbone clip_vitb16 \\
        --out runs/maskclip_voc pamr=true
    leafseg eval kmeans synthetic synth --backbone pixels8 --preset stego labelling=oracle
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leafseg.eval.methods import list_methods
from leafseg.eval.protocol import list_presets

__all__ = ["add_eval_arguments", "register_cli", "run_eval"]


def _option(text: str) -> tuple[str, object]:
    from leafseg.config import parse_key_value
    from leafseg.errors import ConfigError

    try:
        return parse_key_value(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``leafseg eval`` (for embedding the verb in another parser)."""
    p.add_argument("method", help=f"one of: {', '.join(list_methods())}")
    p.add_argument("dataset", help="dataset registry name (voc, context60, coco_object, cityscapes, synthetic, ...)")
    p.add_argument("root", help="dataset root folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="protocol overrides, e.g. short_side=336 pamr=true templates=imagenet80")
    p.add_argument("--preset", default="default",
                   help=f"protocol preset ({', '.join(list_presets())}) or a YAML file (default: default)")
    p.add_argument("--split", default="val")
    p.add_argument("--backbone", help="registry name (maskclip: clip_vitb16; kmeans: dino_vits8 or pixels8)")
    p.add_argument("--weights", help="backbone weights (folder, file, Hub id, 'random') or, for method "
                                      "'model', a recipe checkpoint")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="method option, e.g. k=27 (kmeans) or residual=false (maskclip); repeatable")
    p.add_argument("--data-option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="dataset reader option, as for `leafseg data check -o` (e.g. classes=[sky,road]; repeatable)")
    p.add_argument("--names", help="text file with one class entry per line (synonyms comma-separated) "
                                   "used as prompts instead of the dataset's class names")
    p.add_argument("--out", help="output folder (default: runs/eval/<method>_<dataset>)")
    p.add_argument("--save-predictions", action="store_true", help="write predictions/<name>.png label maps")
    p.add_argument("--overlays", type=int, default=4, help="number of overlay pictures (default 4)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable samples and count them")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    return p


class _IntermixedParser(argparse.ArgumentParser):
    """Lets the KEY=VALUE overrides come after options (``ROOT --preset stego pamr=true``), which plain
    ``parse_args`` refuses once the positionals have been matched."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` verb to the ``leafseg`` sub-parsers; returns its parser."""
    p = subparsers.add_parser("eval", help="evaluate a method on a benchmark under a named protocol",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _IntermixedParser  # same parser, intermixed positional/optional parsing
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)
    return p


def _open_dataset(name: str, root: str, split: str, skip_bad: bool, options: dict):
    from leafseg.data.datasets import build_dataset

    return build_dataset(name, root, split=split, on_error="skip" if skip_bad else "stop", **options)


def _read_names(path: str | None, num_classes: int) -> list[str] | None:
    if path is None:
        return None
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(lines) != num_classes:
        raise ValueError(f"{path}: {len(lines)} class entries, but the dataset has {num_classes} classes")
    return lines


def run_eval(args) -> int:
    """Run one evaluation from parsed arguments; prints the summary and the output folder."""
    from leafseg.eval.harness import evaluate
    from leafseg.eval.methods import build_method
    from leafseg.eval.protocol import load_protocol

    dataset = _open_dataset(args.dataset, args.root, args.split, args.skip_bad, dict(args.data_option))
    protocol = load_protocol(args.preset, getattr(dataset, "name", args.dataset), args.overrides)
    method = build_method(args.method, backbone=args.backbone, weights=args.weights, device=args.device,
                          **dict(args.option))
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{args.method}_{args.dataset}"
    config = {"method": args.method, "dataset": args.dataset, "root": str(args.root), "split": args.split,
              "data_options": dict(args.data_option),
              "backbone": args.backbone, "weights": args.weights, "options": dict(args.option),
              "preset": args.preset, "overrides": list(args.overrides)}
    report = evaluate(method, dataset, protocol, out_dir=out, progress=not args.quiet, device=args.device,
                      save_predictions=args.save_predictions, num_overlays=args.overlays,
                      class_names=_read_names(args.names, len(dataset.classes)), skip_bad=args.skip_bad,
                      method_name=args.method, config=config)
    print(report.summary())
    if report.skipped:
        print(f"skipped {len(report.skipped)} bad samples:", *report.skipped, sep="\n  ")
    print(f"report: {out / 'metrics.json'}")
    return 0
