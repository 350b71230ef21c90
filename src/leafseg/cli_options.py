"""What the command line offers before any work starts: the registry names it accepts, the options
several verbs share (each spelled and explained once) and the checks the verbs run first.

This module imports nothing heavy (no torch, numpy or model code), so building the ``leafseg`` parser,
``--help`` included, stays fast. The name tuples copy registries that live in heavy modules; a test
keeps them equal to :func:`leafseg.data.datasets.list_datasets`, :func:`leafseg.eval.methods.list_methods`,
:func:`leafseg.eval.protocol.list_presets`, ``leafseg.data.synthetic.SPLIT_OFFSETS``,
``leafseg.data.synthetic.SyntheticWorld.classes``, ``leafseg.serve.models.TRAINING_FREE`` and
``leafseg.eval.prompts.TEMPLATE_SETS``.
"""

from __future__ import annotations

import argparse

DATASETS: tuple[str, ...] = (
    "ade20k", "camvid", "cityscapes", "cityscapes27", "coco_object", "coco_stuff171", "coco_stuff27",
    "context59", "context60", "folder", "synthetic", "voc", "voc20",
)
METHODS: tuple[str, ...] = ("maskclip", "sclip", "clearclip", "naclip", "proxyclip", "grouping_clip", "kmeans",
                             "model")
# the protocol preset of `leafseg eval METHOD` without --preset: each training-free CLIP baseline is scored in
# the harness it was published in (grouping_clip: its paper compares with GroupViT's figures, made in GroupViT's
# harness); every other method under "default"
METHOD_PRESETS: dict[str, str] = {"sclip": "sclip-family", "clearclip": "sclip-family", "naclip": "sclip-family",
                                  "proxyclip": "sclip-family", "grouping_clip": "groupvit"}
PRESETS: tuple[str, ...] = ("default", "groupvit", "tcl", "sclip-family", "unimatch", "sseg", "stego")
SYNTHETIC_SPLITS: tuple[str, ...] = ("train", "val", "test")
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "sky", "grass", "water", "sand", "wall", "ball", "box", "tree", "star", "car", "house", "flower",
)
SERVE_METHODS: tuple[str, ...] = ("maskclip", "sclip", "clearclip", "naclip", "kmeans")
TEMPLATES: tuple[str, ...] = ("single", "tcl", "imagenet80", "name")


# -- value types (argparse reports a bad value as "argument --flag: ..." and exits with status 2) -----------
def count(minimum: int = 1):
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def key_value(text: str) -> tuple[str, object]:
    """An argparse type: ``KEY=VALUE`` with the value read as YAML (:func:`leafseg.config.parse_key_value`)."""
    from leafseg.config import parse_key_value
    from leafseg.errors import ConfigError

    try:
        return parse_key_value(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_method_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="method option, e.g. k=27 (kmeans), residual=false (maskclip), std=3 (naclip), "
                        "vfm=dino_vits8 (proxyclip) or group_backbone=dino_vits8 (grouping_clip) "
                        "(repeatable; default: none)")


def size(text: str) -> tuple[int, int]:
    """An argparse type: ``448`` or ``448x448`` (H x W) -> (H, W)."""
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 448 or 448x448, got {text!r}")
    return parts[0], parts[1]


# -- the options several verbs share ---------------------------------------------------------------------
def add_out(p: argparse.ArgumentParser, default: str | None, what: str = "output folder",
            shown: str | None = None) -> None:
    p.add_argument("--out", default=default, metavar="DIR", help=f"{what} (default: {shown or default})")


def add_backbone(p: argparse.ArgumentParser, default: str | None, note: str = "") -> None:
    shown = default or "the method's own"
    p.add_argument("--backbone", default=default, metavar="NAME",
                   help=f"encoder registry name (`leafseg backbones` lists them) or pixels8 for raw RGB cells"
                        f"{note} (default: {shown})")


def add_weights(p: argparse.ArgumentParser, default: str | None, note: str = "") -> None:
    shown = default or "the local Hugging Face cache"
    p.add_argument("--weights", default=default, metavar="WEIGHTS",
                   help=f"backbone weights: a local folder or .pth/.safetensors file, a Hugging Face id, or 'random'"
                        f"{note} (default: {shown})")


def add_seed(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--seed", type=int, default=0, help=f"random seed of {what} (default: 0)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")


def add_workers(p: argparse.ArgumentParser, default: int = 2) -> None:
    p.add_argument("--workers", type=count(0), default=default, metavar="N",
                   help=f"data-loading processes; 0 reads in this process (default: {default})")


def add_batch_size(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--batch-size", type=count(1), default=default, metavar="N",
                   help=f"images per forward pass (default: {default})")


def add_skip_bad(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable or inconsistent samples and list them at the end "
                        "(default: stop at the first one, naming it)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: shown)")


def add_split(p: argparse.ArgumentParser, default: str | None, shown: str | None = None, **kwargs) -> None:
    p.add_argument("--split", default=default, help=f"split name (default: {shown or default})", **kwargs)


def example(command: str) -> dict:
    """Keyword arguments of ``add_parser`` that end the verb's ``--help`` with a working example command."""
    return {"epilog": f"example:\n  {command}", "formatter_class": argparse.RawDescriptionHelpFormatter}


# -- checks the handlers run before the work starts -----------------------------------------------------
def check_device(name: str) -> str:
    """Raise ConfigError naming ``--device`` when ``name`` is not a device torch can use here."""
    import torch

    from leafseg.errors import ConfigError

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"--device {name}: not a torch device ({err})") from None
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ConfigError(f"--device {name}: CUDA is not available here (torch {torch.__version__})")
        if device.index is not None and device.index >= available:
            raise ConfigError(f"--device {name}: this machine has {available} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available here")
    return name


class IntermixedParser(argparse.ArgumentParser):
    """Lets ``KEY=VALUE`` positionals come after options (``ROOT --preset stego pamr=true``), which plain
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


def intermixed(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The same parser, now parsing positionals and options intermixed (see :class:`IntermixedParser`)."""
    p.__class__ = IntermixedParser
    return p
