"""`leafseg <verb>`: the command line. It parses arguments and dispatches; the work lives in the package.

Building the parser imports nothing heavy (``leafseg --help`` answers at once): each handler imports
what its verb needs. A mistake the person can fix (:class:`~leafseg.errors.UserError`, a missing input
file) is printed as one ``leafseg: error: ...`` message with exit status 2; any other exception is a fault
of leafseg and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from leafseg.cli_options import (
    METHODS,
    SERVE_METHODS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_SPLITS,
    TEMPLATES,
    add_backbone,
    add_batch_size,
    add_device,
    add_method_option,
    add_out,
    add_quiet,
    add_seed,
    add_skip_bad,
    add_weights,
    add_workers,
    check_device,
    count,
    example,
    fraction,
    intermixed,
    size,
)
from leafseg.data.cli_check import register_cli as register_data_cli
from leafseg.errors import ConfigError, UserError
from leafseg.eval.cli_eval import register_cli as register_eval_cli
from leafseg.recipes.fuss.cli import register_cli as register_fed_cli
from leafseg.registry import RECIPES


# -- handlers: each imports the work it dispatches to ----------------------------------------------------
def _cmd_demo(args) -> int:
    from leafseg.demo import run_demo

    check_device(args.device)
    run_demo(args.out, scenes=args.scenes, size=args.size, k=args.k, backbone=args.backbone, weights=args.weights,
             seed=args.seed, device=args.device, progress=not args.quiet, semi_epochs=args.semi_epochs,
             jobs=args.jobs, fed_rounds=args.fed_rounds)
    return 0


def _cmd_pseudo_masks(args) -> int:
    if args.gt is not None and args.num_classes is None:
        raise ConfigError("--gt needs --num-classes (the label values of the masks are checked against it)")
    if not Path(args.images).is_dir():
        raise FileNotFoundError(f"{args.images}: image folder not found")
    from leafseg.eval.pseudo_mask_folder import pseudo_mask_folder
    from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor
    from leafseg.training.runinfo import run_record, write_json

    check_device(args.device)
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


def _cmd_backbones(args) -> int:
    from leafseg.backbones import list_backbones

    print("pixels8 (raw RGB, 8x8 cells; pixels4 etc.)")
    for name in list_backbones():
        print(name)
    return 0


def _cmd_synth(args) -> int:
    from leafseg.data.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=args.seed, size=args.size)
    root = world.write(args.out, args.scenes, split=args.split)
    print(f"wrote {args.scenes} {args.split} scenes ({world.num_classes} classes) to {root}")
    return 0


def _cmd_eval(args) -> int:
    from leafseg.eval.cli_eval import run_eval

    return run_eval(args)


def _cmd_train(args) -> int:
    import json

    from leafseg.registry import recipe_module

    if args.overwrite and (args.resume or args.resume_from):
        raise ConfigError("--overwrite starts the run afresh, so it cannot be combined with --resume or "
                          "--resume-from")
    if args.resume_from is not None and not Path(args.resume_from).exists():
        raise FileNotFoundError(f"--resume-from {args.resume_from}: checkpoint not found")
    resume = args.resume_from if args.resume_from is not None else args.resume
    recipe = recipe_module(args.recipe)
    result = recipe.run(args.config, args.overrides, resume=resume, overwrite=args.overwrite)
    figures = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    print(json.dumps(figures, indent=2, default=str))
    return 0


def _cmd_config(args) -> int:
    from leafseg.config import dump_config
    from leafseg.registry import load_config_of

    print(dump_config(load_config_of(args.recipe, args.config, args.overrides)), end="")
    return 0


def _cmd_segment(args) -> int:
    classes = None
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise ConfigError("--classes needs at least one class name, e.g. --classes 'cat,dog,grass'")
    for image in args.images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"{image}: image not found")
    if args.method == "model" and args.weights is not None and not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights {args.weights}: weights not found")
    from leafseg.eval.segment import build_segment_method, check_alpha, read_class_file, segment_images

    if args.classes_file is not None:
        classes = read_class_file(args.classes_file)
    check_alpha(args.alpha)
    check_device(args.device)
    method = build_segment_method(args.method, weights=args.weights, backbone=args.backbone,
                                  options=dict(args.option), device=args.device)
    written = segment_images(args.images, method, args.out, classes=classes, templates=args.templates,
                             bg_threshold=args.bg_threshold, alpha=args.alpha, device=args.device,
                             source=args.weights if args.method == "model" else f"method {args.method}")
    for paths in written:
        for key, path in paths.items():
            print(f"{key}: {path}")
    return 0


def _cmd_report(args) -> int:
    for folder in args.runs:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: run folder not found")
    from leafseg.eval.run_report import write_run_report

    check_device(args.device)
    page = write_run_report(args.runs, args.out, scenes=args.scenes, device=args.device)
    print(f"report: {page}")
    return 0


def _cmd_serve(args) -> int:
    import importlib.util

    for path in args.model:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--model {path}: weights not found")
    if args.scenes_dir is not None and Path(args.scenes_dir).exists() and not Path(args.scenes_dir).is_dir():
        raise ConfigError(f"--scenes-dir {args.scenes_dir}: not a folder")
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("leafseg serve needs Gradio: pip install 'leafseg[serve]' (or bash scripts/setup.sh serve)")
    from leafseg.serve.run import check_port, serve

    check_port(args.host, args.port)  # before any model is loaded
    check_device(args.device)
    serve(args.model, args.method, args.backbone, args.weights, classes=args.classes, scenes=args.scenes,
          scene_size=args.scene_size, scenes_dir=args.scenes_dir, seed=args.seed, max_side=args.max_side,
          host=args.host, port=args.port, device=args.device, announce=lambda line: print(line, flush=True))
    print("leafseg serve: stopped")
    return 0


# -- the parser ------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic world -> pseudo-masks -> oracle mIoU, gallery and HTML report",
                       **example("leafseg demo --out demo_out --scenes 16 --size 64 --semi-epochs 0 --fed-rounds 0"))
    add_out(p, "demo_out")
    p.add_argument("--scenes", type=count(1), default=48, metavar="N", help="scenes of the world (default: 48)")
    p.add_argument("--size", type=count(16), default=96, metavar="PX", help="scene side in pixels (default: 96)")
    p.add_argument("--k", type=count(1), default=8, metavar="N", help="regions per image (default: 8)")
    add_backbone(p, "dino_vits8")
    add_weights(p, "random", note="; 'random' needs no download")
    add_seed(p, "the world and the models")
    add_device(p)
    p.add_argument("--semi-epochs", type=count(0), default=7, metavar="N",
                   help="epochs (240 iterations each) of the semi-supervised comparison; 0 skips it (default: 7)")
    p.add_argument("--jobs", type=count(1), default=None, metavar="N",
                   help="processes for the two semi-supervised runs; every model runs on one thread, so the "
                        "figures do not depend on it (default: 2 on a machine with two cores, else 1)")
    p.add_argument("--fed-rounds", type=count(0), default=3, metavar="N",
                   help="rounds of the federated comparison (4 clients, local-only against FUSS, on Flower's "
                        "simulation engine; needs the fed extra); 0 skips it (default: 3)")
    add_quiet(p)
    p.set_defaults(func=_cmd_demo)


def _add_pseudo_masks(sub) -> None:
    p = sub.add_parser("pseudo-masks", help="cluster backbone features of a folder of images into region maps",
                       **example("leafseg pseudo-masks synth/images/val --out masks --backbone pixels8 --k 6 "
                                 "--gt synth/masks/val --num-classes 12"))
    p.add_argument("images", metavar="IMAGES", help="folder of images")
    add_out(p, "pseudo_masks_out", what="folder for the region maps (palette PNGs named after the images)")
    p.add_argument("--gt", metavar="DIR",
                   help="folder of ground-truth masks (<image stem>.png) to report the oracle mIoU (default: none)")
    p.add_argument("--num-classes", type=count(1), metavar="N",
                   help="number of classes of the ground-truth masks; needed with --gt (default: none)")
    p.add_argument("--ignore-index", type=int, default=255, help="mask value that is not scored (default: 255)")
    add_backbone(p, "dino_vits8")
    add_weights(p, None)
    p.add_argument("--k", type=count(1), default=8, metavar="N", help="regions per image (default: 8)")
    p.add_argument("--layer", type=int, default=-1, help="block whose features are clustered (default: -1, the last)")
    p.add_argument("--kind", default="tokens", choices=["tokens", "keys", "queries", "values"],
                   help="which features of that block (default: tokens)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"],
                   help="k-means distance (default: cosine)")
    p.add_argument("--upsample", default="bilinear", choices=["bilinear", "nearest"],
                   help="how token regions are resized to pixels (default: bilinear)")
    p.add_argument("--size", type=size, metavar="HxW",
                   help="working size every image is resized to, which enables batching "
                        "(default: each image keeps its size, one at a time)")
    add_batch_size(p, 16)
    add_workers(p)
    add_skip_bad(p)
    add_seed(p, "k-means")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_cmd_pseudo_masks)


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic world (images, masks, captions.jsonl) to a folder",
                       **example("leafseg synth --out synth --scenes 64 --size 64 --split val"))
    add_out(p, "synth_out", what="folder of the world")
    p.add_argument("--scenes", type=count(1), default=256, metavar="N", help="scenes to write (default: 256)")
    p.add_argument("--size", type=count(16), default=96, metavar="PX", help="scene side in pixels (default: 96)")
    p.add_argument("--split", default="train", choices=SYNTHETIC_SPLITS,
                   help="split, which sets the scene numbers (default: train)")
    add_seed(p, "the world")
    p.set_defaults(func=_cmd_synth)


def _add_train(sub) -> None:
    p = intermixed(sub.add_parser("train", help="train a recipe: " + ", ".join(RECIPES),
                                  **example("leafseg train unimatch_v2 configs/unimatch_v2/synthetic.yaml "
                                            "out_dir=runs/semi seed=1")))
    p.add_argument("recipe", choices=sorted(RECIPES), metavar="RECIPE", help=f"one of: {', '.join(RECIPES)}")
    p.add_argument("config", metavar="CONFIG", help="YAML config (see configs/<recipe>/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, before or after the options, e.g. out_dir=runs/a seed=2")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the config's out_dir from its last checkpoint (default: a fresh run)")
    p.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="continue from this checkpoint file (default: none)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if out_dir holds a run, replacing it (default: refuse)")
    p.set_defaults(func=_cmd_train)


def _add_config(sub) -> None:
    p = intermixed(sub.add_parser("config", help="print a recipe's fully resolved config",
                                  **example("leafseg config sseg configs/sseg/synthetic.yaml pseudo_masks.k=16")))
    p.add_argument("recipe", choices=sorted(RECIPES), metavar="RECIPE", help=f"one of: {', '.join(RECIPES)}")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="YAML config (see configs/<recipe>/; default: the recipe's defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. seed=2")
    p.set_defaults(func=_cmd_config)


def _add_segment(sub) -> None:
    p = intermixed(sub.add_parser(
        "segment", help="label images with a trained model (any recipe's exported weights) or a method by name",
        description="Label images. Writes per IMAGE its stem + _labels.png (class indices), _overlay.png (colours "
                    "over the image, with a legend of the classes present) and _classes.json (per class: index, "
                    "name, colour, share of the pixels).",
        **example('leafseg segment photo.jpg street.png --method grouping_clip --weights clip_folder '
                  '--option group_weights=dino_folder --classes "road,sky,tree" --out seg')))
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--method", default="model", choices=METHODS, metavar="METHOD",
                   help=f"'model' for weights a recipe exported, or a method built by name: "
                        f"{', '.join(m for m in METHODS if m not in ('model', 'kmeans'))} (default: model)")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="with --method model: weights a recipe exported, final.pt (S-Seg, S-Seg+) or *.safetensors "
                        "(UniMatch V2, grouping_clip), needed; with another method: its backbone's weights, a local "
                        "folder or file, a Hugging Face id or 'random' (default: none, the local Hugging Face cache)")
    add_backbone(p, None, note="; only for a method built by name")
    add_method_option(p)
    names = p.add_mutually_exclusive_group()
    names.add_argument("--classes", default=None,
                       help='comma-separated names, e.g. "cat,dog,grass"; needed by open-vocabulary models (S-Seg, '
                            "grouping_clip, the CLIP methods); others use their own classes (default: the model's)")
    names.add_argument("--classes-file", default=None, metavar="FILE",
                       help="text file with one class per line (synonyms comma-separated), instead of --classes "
                            "(default: none)")
    add_out(p, "segment_out")
    p.add_argument("--templates", default="single", choices=TEMPLATES, help="prompt templates (default: single)")
    p.add_argument("--bg-threshold", type=float, default=None,
                   help="label 0 = background where the best class scores below this (default: no background)")
    p.add_argument("--alpha", type=fraction, default=0.55, metavar="A",
                   help="opacity of the class colours in the overlay, from 0 (image only) to 1 (colours only) "
                        "(default: 0.55)")
    add_device(p)
    p.set_defaults(func=_cmd_segment)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="compare training runs and evaluations: curves, per-class IoU, predictions",
                       description="An HTML page with pictures for training run folders (leafseg train) and "
                                   "evaluation folders (leafseg eval): loss and mIoU against iteration, IoU per "
                                   "class,\nand each trained model's predictions beside the ground truth.",
                       **example("leafseg report runs/semi runs/labelled_only eval_out --out report_semi"))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="training run folders and/or `leafseg eval` output folders")
    add_out(p, "report_out", what="folder for report.html and its pictures")
    p.add_argument("--scenes", type=count(0), default=4, metavar="N",
                   help="validation scenes whose predictions are shown; 0 leaves them out (default: 4)")
    add_device(p)
    p.set_defaults(func=_cmd_report)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: pick a model, upload an image, see its classes",
                       description="Serve a web page on this machine (Gradio): pick a model, upload an image or "
                                   "pick a synthetic scene,\ntype class names where the model is open-vocabulary, "
                                   "and see the overlay with its legend and each class's share\nof the image. "
                                   "Nothing is fetched from outside the machine.",
                       **example("leafseg serve --model runs/sseg_synthetic/final.pt --method kmeans "
                                 "--backbone pixels8 --port 7860"))
    p.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="weights a recipe exported (final.pt, *.safetensors); repeatable (default: none; the page "
                        "can also load a typed path)")
    p.add_argument("--method", action="append", default=[], choices=SERVE_METHODS, metavar="NAME",
                   help="a training-free method to offer: maskclip, sclip, clearclip or naclip (on CLIP weights) "
                        "or kmeans; repeatable (default: kmeans on pixels8 when no --model is given either)")
    p.add_argument("--backbone", metavar="NAME",
                   help="encoder of the --method models: a registry name (`leafseg backbones` lists them) or "
                        "pixels8 for raw RGB cells (default: clip_vitb16 for the CLIP methods, pixels8 for kmeans)")
    p.add_argument("--weights", metavar="WEIGHTS",
                   help="weights of --backbone: a local folder or .pth/.safetensors file, a Hugging Face id in the "
                        "local cache, or 'random' (default: the local Hugging Face cache)")
    p.add_argument("--classes", default=", ".join(SYNTHETIC_CLASSES),
                   help="class names the page starts with for open-vocabulary models, comma-separated "
                        "(default: the synthetic world's 12 classes)")
    p.add_argument("--scenes", type=count(0), default=6, metavar="N",
                   help="synthetic scenes the page offers as example images; 0 offers none (default: 6)")
    p.add_argument("--scene-size", type=count(16), default=192, metavar="PX",
                   help="side of the synthetic scenes in pixels (default: 192)")
    p.add_argument("--scenes-dir", metavar="DIR",
                   help="folder to write the scenes into and keep (default: a temporary folder, removed when the "
                        "server stops)")
    add_seed(p, "the synthetic scenes")
    p.add_argument("--max-side", type=count(16), default=1024, metavar="PX",
                   help="larger images are shrunk to this longer side for the model; the overlay keeps the "
                        "image's size (default: 1024)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens the page (and its checkpoint-path box) to the "
                        "network (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=count(1), default=7860, help="port to listen on (default: 7860)")
    add_device(p)
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leafseg", description="Semantic segmentation with few or no dense labels, on foundation models.")
    sub = parser.add_subparsers(title="verbs", metavar="VERB", required=True)
    _add_demo(sub)
    _add_pseudo_masks(sub)
    sub.add_parser("backbones", help="list the registry names of the encoders",
                   **example("leafseg backbones")).set_defaults(func=_cmd_backbones)
    _add_synth(sub)
    register_data_cli(sub)
    register_eval_cli(sub).set_defaults(func=_cmd_eval)
    _add_train(sub)
    register_fed_cli(sub)  # `leafseg fed ...`: federated runs (leafseg.recipes.fuss.cli)
    _add_config(sub)
    _add_segment(sub)
    _add_report(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = None
    if hasattr(args, "weights"):  # the verb has a --weights flag: messages about missing weights name it
        from leafseg.backbones.sources import WEIGHTS_OPTION

        token = WEIGHTS_OPTION.set("--weights ")
    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as err:
        print(f"leafseg: error: {err}", file=sys.stderr)
        return 2
    finally:
        if token is not None:
            WEIGHTS_OPTION.reset(token)


if __name__ == "__main__":
    sys.exit(main())
