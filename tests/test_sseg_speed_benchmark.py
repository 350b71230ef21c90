"""The S-Seg speed benchmark (benchmarks/sseg_speed.py): the naive per-image pseudo-mask loop finds the
regions leafseg's batched generator finds, and the benchmark's last line has its form."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sseg_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sseg_speed_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_loop_and_batched_generator_find_the_same_regions(bench):
    """Three flat colours per image, in different places: both paths give the same partition (up to the
    region ids), image by image."""
    from leafseg.grouping import PseudoMaskGenerator, build_feature_extractor

    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    images = torch.empty(3, 3, 48, 48)
    for i in range(3):
        order = colours.roll(i, 0)
        for j, (a, b) in enumerate(((0, 16), (16, 40), (40, 48))):
            images[i, :, :, a:b] = order[j].view(3, 1, 1)
    encoder = build_feature_extractor("pixels8")
    naive = bench.naive_pseudo_masks(encoder, images, 3)
    batched = PseudoMaskGenerator(encoder, k=3)(images)
    assert naive.shape == batched.shape == (3, 48, 48)
    for a, b in zip(naive, batched, strict=True):
        pairs = set(zip(a.flatten().tolist(), b.flatten().tolist(), strict=True))
        assert len(pairs) == len(set(a.flatten().tolist())) == len(set(b.flatten().tolist())) == 3


def test_quick_run_prints_the_figures_as_last_line(bench, capsys):
    line = bench.main(["--quick", "--device", "cpu"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    pattern = (r"sseg_speed \[cpu, 1 thread, load [\d.]+->[\d.]+\]: train [\d.]+ img/s at 112px batch 1 \(.+\); "
               r"pseudo-masks dino_vits8 K=8, median of 5 rounds: batched ([\d.]+) s/img \(([\d.]+)-([\d.]+)\) at "
               r"batch 2 \| naive per-image loop ([\d.]+) s/img \(([\d.]+)-([\d.]+)\) \| speed-up x([\d.]+) "
               r"\(([\d.]+)-([\d.]+)\) \| paper 0\.002 s/img GPU, x[\d.]+; pixel K-means [\d.]+ s/img \(paper 0\.188\)")
    match = re.fullmatch(pattern, line)
    assert match, line
    b, blo, bhi, n, nlo, nhi, r, rlo, rhi = map(float, match.groups())
    assert blo <= b <= bhi and nlo <= n <= nhi and rlo <= r <= rhi and r > 0
