"""`leafseg data check DATASET ROOT`: the arguments. The scan itself is :mod:`leafseg.data.check`, imported
only when the verb runs, so building the parser imports nothing heavy.

    leafseg data check voc data/VOCdevkit --split val
    leafseg data check folder data/mine -o classes=[sky,road,car] -o mask_suffix=_mask --json check.json
"""

from __future__ import annotations

import argparse

from leafseg.cli_options import DATASETS, add_quiet, add_split, add_workers, count, example

__all__ = ["add_check_arguments", "register_cli"]

EXAMPLE = "leafseg data check synthetic synth --split val"


def add_check_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``leafseg data check`` (for embedding the verb in another parser)."""
    p.add_argument("dataset", choices=DATASETS, metavar="DATASET", help=f"registry name: {', '.join(DATASETS)}")
    p.add_argument("root", metavar="ROOT", help="dataset root folder")
    add_split(p, None, shown="val; with --split-file, the file's name")
    p.add_argument("--split-file", default=None, metavar="PATH",
                   help="file of 'image_relpath mask_relpath' lines to check instead of a split (default: none)")
    p.add_argument("-o", "--data-option", dest="data_option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset reader option, values read as YAML, e.g. -o from_raw=true -o classes=[sky,road] "
                        "(repeatable; default: none)")
    add_workers(p)
    p.add_argument("--limit", type=count(0), default=5, metavar="N",
                   help="file names shown per problem (default: 5)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON (default: no)")
    add_quiet(p)
    return p


def _run_check(args) -> int:
    from leafseg.data.check import run_check

    return run_check(args)


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``data`` verb (sub-verb ``check``) to the top-level ``leafseg`` sub-parsers; returns the
    ``check`` parser."""
    data = subparsers.add_parser("data", help="dataset utilities (check a dataset before training)",
                                 description="Dataset utilities.", **example(EXAMPLE))
    verbs = data.add_subparsers(title="data verbs", metavar="VERB", required=True)
    p = verbs.add_parser("check", help="scan a dataset split and report unreadable, mismatched or mislabelled files",
                         description=__doc__, **example(EXAMPLE))
    add_check_arguments(p)
    p.set_defaults(func=_run_check)
    return p
