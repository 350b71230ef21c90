"""Write labelled / unlabelled split files in the UniMatch format ("image_relpath mask_relpath" per line).

A random split of any leafseg dataset (the published splits come from the authors; see README.md):

    python splits/make_splits.py --dataset voc --root data/VOCdevkit/VOC2012 --split train \\
        --labeled 92 --seed 0 --out splits/pascal_random/92

The synthetic world (written to --root first if it is not there), 1/16 of the train scenes labelled:

    python splits/make_splits.py --synthetic --root data/synthetic_unimatch --train 1024 --val 128 \\
        --size 64 --labeled 1/16 --out splits/synthetic/1_16
"""

from __future__ import annotations

import argparse
from fractions import Fraction

from leafseg.recipes.unimatch_v2 import write_random_splits
from leafseg.training import SyntheticSpec


def main() -> None:
    parser = argparse.ArgumentParser(description="write labeled.txt / unlabeled.txt split files")
    parser.add_argument("--dataset", default="synthetic", help="leafseg dataset name (see docs/datasets.md)")
    parser.add_argument("--root", required=True, help="dataset root; the split files are relative to it")
    parser.add_argument("--split", default="train", help="the split to draw from (default: train)")
    parser.add_argument("--labeled", required=True, help="a count (92) or a fraction (1/16, 0.0625)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for labeled.txt and unlabeled.txt")
    parser.add_argument("--synthetic", action="store_true", help="write a synthetic world to --root first")
    parser.add_argument("--train", type=int, default=1024, help="synthetic: train scenes")
    parser.add_argument("--val", type=int, default=128, help="synthetic: val scenes")
    parser.add_argument("--size", type=int, default=64, help="synthetic: scene side in pixels")
    parser.add_argument("--world-seed", type=int, default=0, help="synthetic: generator seed")
    args = parser.parse_args()
    if args.synthetic:
        SyntheticSpec(args.train, args.val, args.size, args.world_seed).ensure(args.root)
    value = Fraction(args.labeled)
    count, fraction = (int(value), 0.0) if value.denominator == 1 and value >= 1 else (0, float(value))
    lab, unl = write_random_splits("synthetic" if args.synthetic else args.dataset, args.root, args.out,
                                   num_labeled=count, fraction=fraction, seed=args.seed, split=args.split)
    print(f"wrote {lab} ({len(lab.read_text().splitlines())} labelled) and {unl} "
          f"({len(unl.read_text().splitlines())} unlabelled)")


if __name__ == "__main__":
    main()
