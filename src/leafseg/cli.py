"""`leafseg <verb>`: the command line. It parses arguments and dispatches; the work lives in the package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 448 or 448x448, got {text!r}")
    return parts[0], parts[1]


def _cmd_demo(args) -> int:
    from leafseg.demo import run_demo

    result = run_demo(args.out, scenes=args.scenes, size=args.size, k=args.k, backbone=args.backbone,
                      weights=args.weights, seed=args.seed, device=args.device, progress=not args.quiet,
                      semi_epochs=args.semi_epochs)
    for row in result["rows"]:
        print(f"{row['method']}: oracle mIoU {row['oracle mIoU']:.1f}  "
              f"pixel acc. {row['pixel acc.']:.1f}  ({row['images/s']:.1f} images/s)")
    for row in result["semi_supervised"] or []:
        print(f"{row['method']} (1/16 labelled, {row['iterations']} iterations): best EMA mIoU "
              f"{row['best EMA mIoU']:.1f}  final EMA mIoU {row['final EMA mIoU']:.1f}  ({row['seconds']:.0f} s)")
    print(f"report: {result['report']}")
    print(f"gallery: {result['gallery']}")
    return 0


def _cmd_pseudo_masks(args) -> int:
    from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor
    from leafseg.grouping.folder import pseudo_mask_folder
    from leafseg.training.runinfo import run_record, write_json

    encoder = build_feature_extractor(args.backbone, weights=args.weights, device=args.device).eval()
    generator = PseudoMaskGenerator(encoder, k=args.k, layer=args.layer, kind=args.kind, metric=args.metric,
                                    seed=args.seed, upsample=args.upsample)
    result = pseudo_mask_folder(generator, args.images, args.out, gt_dir=args.gt, num_classes=args.num_classes,
                                ignore_index=args.ignore_index, working_size=args.size,
                                batch_size=args.batch_size, num_workers=args.workers, skip_bad=args.skip_bad,
                                device=args.device, progress=not args.quiet)
    record = run_record(seed=args.seed, config={k: v for k, v in vars(args).items() if k != "func"},
                        device=args.device)
    record["metrics"] = {"written": result.written, "skipped": result.skipped,
                         "images_per_second": result.images_per_second, "oracle": result.oracle}
    write_json(Path(args.out) / "run.json", record)
    print(f"wrote {result.written} region maps to {args.out} ({result.images_per_second:.1f} images/s)")
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad samples:", *result.skipped, sep="\n  ")
    if result.oracle is not None:
        print(f"oracle mIoU: {100 * result.oracle['miou']:.2f}  pixel acc.: {100 * result.oracle['acc']:.2f}")
    return 0


RECIPES = {  # `leafseg train NAME`: the recipe module whose run(config, overrides, resume) trains
    "unimatch_v2": "leafseg.recipes.unimatch_v2",
    "sseg": "leafseg.recipes.sseg",
    "sseg_plus": "leafseg.recipes.sseg_plus",
}


def _import_recipes() -> None:
    """Importing a recipe registers its checkpoint loader with the evaluation harness."""
    import importlib

    for module in RECIPES.values():
        importlib.import_module(module)


def _cmd_train(args) -> int:
    import importlib
    import json

    recipe = importlib.import_module(RECIPES[args.recipe])
    resume = args.resume if args.resume not in (None, "last") else args.resume == "last"
    result = recipe.run(args.config, args.overrides, resume=resume)
    figures = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    print(json.dumps(figures, indent=2, default=str))
    return 0


def _cmd_segment(args) -> int:
    from leafseg.recipes.sseg import segment

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise ValueError("--classes needs at least one class name, e.g. --classes 'cat,dog,grass'")
    paths = segment(args.image, classes, args.checkpoint, args.out, templates=args.templates,
                    bg_threshold=args.bg_threshold, device=args.device)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def _cmd_eval(args) -> int:
    from leafseg.eval.cli_eval import run_eval

    if args.method == "model":
        _import_recipes()
    return run_eval(args)


def _cmd_backbones(args) -> int:
    from leafseg.backbones import list_backbones

    print("pixels8 (raw RGB, 8x8 cells; pixels4 etc.)")
    for name in list_backbones():
        print(name)
    return 0


def _cmd_synth(args) -> int:
    from leafseg.data.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=args.seed, size=args.size)
    root = world.write(args.out, args.n, split=args.split)
    print(f"wrote {args.n} {args.split} scenes ({world.num_classes} classes) to {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leafseg", description="Semantic segmentation with few or no dense labels, on foundation models.")
    sub = parser.add_subparsers(title="verbs", metavar="VERB", required=True)

    p = sub.add_parser("demo", help="synthetic world -> pseudo-masks -> oracle mIoU, gallery and HTML report")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--scenes", type=int, default=48)
    p.add_argument("--size", type=int, default=96, help="scene side in pixels")
    p.add_argument("--k", type=int, default=8, help="regions per image")
    p.add_argument("--backbone", default="dino_vits8")
    p.add_argument("--weights", default="random",
                   help="'random' (default, no download needed), a local folder/.pth, or a Hugging Face id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--semi-epochs", type=int, default=10, metavar="N",
                   help="epochs (240 iterations each) of the semi-supervised comparison; 0 skips it (default 10)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("pseudo-masks", help="cluster backbone features of a folder of images into region maps")
    p.add_argument("images", help="folder of images")
    p.add_argument("out", help="folder for the region maps (palette PNGs named after the images)")
    p.add_argument("--gt", help="folder of ground-truth masks (<image stem>.png) to report the oracle mIoU")
    p.add_argument("--num-classes", type=int, help="number of classes of the ground-truth masks")
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--backbone", default="dino_vits8", help="registry name, or pixels8 for RGB K-means")
    p.add_argument("--weights", default=None, help="local folder/.pth/.safetensors or Hugging Face id")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--kind", default="tokens", choices=["tokens", "keys", "queries", "values"])
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    p.add_argument("--upsample", default="bilinear", choices=["bilinear", "nearest"])
    p.add_argument("--size", type=_size, help="working size HxW every image is resized to (enables batching)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable/inconsistent files and count them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_pseudo_masks)

    p = sub.add_parser("backbones", help="list the registry names of the encoders")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("synth", help="write a synthetic world (images, masks, captions.jsonl) to a folder")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    from leafseg.data.check import register_cli as register_data_cli

    register_data_cli(sub)

    from leafseg.eval.cli_eval import register_cli as register_eval_cli

    register_eval_cli(sub).set_defaults(func=_cmd_eval)

    p = sub.add_parser("train", help="train a recipe: " + ", ".join(RECIPES))
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("config", help="YAML config (see configs/<recipe>/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue the run in the config's out_dir (or from the given checkpoint)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("segment", help="label one image with free-form class names (an S-Seg checkpoint)")
    p.add_argument("image")
    p.add_argument("--classes", required=True, help='comma-separated names, e.g. "cat,dog,grass"')
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `leafseg train sseg`")
    p.add_argument("--out", default="segment_out")
    p.add_argument("--templates", default="single", help="prompt templates: single, tcl, imagenet80")
    p.add_argument("--bg-threshold", type=float, default=None, help="label 0 = background below this score")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_segment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from leafseg.backbones import BackboneNotAvailable
    from leafseg.data.io import DataError

    try:
        return args.func(args)
    except (DataError, BackboneNotAvailable, ValueError, FileNotFoundError) as err:
        print(f"leafseg: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
