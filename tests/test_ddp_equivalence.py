"""Two gloo processes train what one process trains with the same global batch.

For every recipe on the run engine (UniMatch V2 with each of its methods, S-Seg, S-Seg+, grouping_clip,
CLIP pretraining, STEGO) a tiny run of 3 iterations is trained once in one process with a global batch of 4
and once in two processes with 2 per process (``batch_size`` is per process in every recipe); the final
weights must agree within float tolerance. Each step of both runs sees the same 4 samples: the samplers
shuffle one order per epoch and deal it to the ranks, so rank r's i-th batch holds the samples at positions
r, r + 2, ... of the one-process batch.

What draws from each rank's own random generator (seeded ``seed + rank``) differs between the two runs by
construction, and is turned off here:

* settings: S-Seg's flip (``flip=false``), the image-text sources' shuffle buffer (``shuffle_buffer=0``: the
  buffer shuffles each rank's stream with that rank's generator, so a step would see other samples), CLIP's
  random resized crop and flip (``augment={scale: [1, 1], ratio: [1, 1], flip: 0}``), UniMatch V2's CutMix
  (``cutmix_p=0``) and Complementary Dropout (``complementary_dropout=false``), STEGO's channel dropout
  (``head.dropout=0``) and random partners (``loss.negatives=0``: they are drawn within each rank's half of
  the batch); STEGO's centering (``loss.centering=false``) adds back the mean feature correlation over the
  whole batch, a statistic of each rank's half batch under DDP, like BatchNorm's (the head then differs by
  about 2e-2 after 3 steps); crops at scale 1 (``scale_range=[1, 1]``) so that no crop is padded: the
  cross-entropies are means over each rank's non-ignored pixels, which equal the global mean only when
  every rank has as many.
* no setting turns off UniMatch V2's strong colour augmentation or STEGO's random sample points, so the
  worker replaces the first with the identity and the second with a fixed grid of points.

S-Seg's matched-mask normaliser must be the global count: ``test_sseg_mask_count_is_averaged_over_ranks``
gives the ranks different numbers of masks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip_tiny import clip_args
from grouping_clip_tiny import gclip_args, write_tiny_clip
from leafseg.registry import recipe_module
from leafseg.training import read_exported
from sseg_tiny import plus_args, sseg_args, write_world
from stego_tiny import stego_args
from unimatch_tiny import write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
CASES = ("unimatch_v2", "unimatch_v2:fixmatch", "unimatch_v2:supervised", "sseg", "sseg_plus", "grouping_clip",
         "clip", "stego")
GLOBAL_BATCH, STEPS = 4, 3
RTOL, ATOL = 1e-4, 1e-5
# Adam's first steps move a weight by about lr x sign(gradient): a weight whose gradient is zero in exact
# arithmetic (an attention key's bias: softmax ignores a shift common to every key) moves by rounding noise
# scaled up towards lr, and its neighbours in the q/k projections follow. S-Seg (lr 3e-3) and CLIP (lr 3e-3)
# differ there by up to 3.5e-4 and 1.9e-4, everywhere else within ATOL.
LOOSER = {"sseg": 5e-4, "clip": 5e-4}
WEIGHTS = {"unimatch_v2": ("final_student.safetensors", "final_ema.safetensors"), "sseg": ("final.pt",),
           "sseg_plus": ("final.pt",), "grouping_clip": ("final.safetensors",), "clip": ("clip/model.safetensors",),
           "stego": ("final.safetensors",)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def teacher(world, tmp_path_factory):
    """A trained S-Seg for the S-Seg+ runs."""
    out = tmp_path_factory.mktemp("teacher") / "sseg"
    return recipe_module("sseg").run(None, sseg_args(world, out, "iterations=4"))["checkpoint"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def settings(case: str, world: Path, teacher: Path, clip: Path, folder: Path) -> tuple[str | None, list[str]]:
    """(config file, overrides) of the case's tiny run of ``STEPS`` iterations, without the batch size."""
    recipe, _, method = case.partition(":")
    common = ["device=cpu", "log_every=1", f"save_every={STEPS}"]
    if recipe == "unimatch_v2":
        config = write_tiny_config(folder / "tiny.yaml", folder / "world")
        return str(config), [*common, f"method={method or 'unimatch_v2'}", "epochs=1", f"iters_per_epoch={STEPS}",
                             "scale_range=[1.0, 1.0]", "cutmix_p=0.0", "complementary_dropout=false"]
    if recipe == "sseg":
        return None, sseg_args(world, folder, f"iterations={STEPS}", "shuffle_buffer=0", "flip=false", *common)
    if recipe == "sseg_plus":
        return None, plus_args(world, teacher, folder, f"iterations={STEPS}", "scale_range=[1.0, 1.0]",
                               "student_init=sseg", "eval_teacher=false", *common)
    if recipe == "grouping_clip":
        return None, gclip_args(world, clip, folder, f"iterations={STEPS}", "shuffle_buffer=0", *common)
    if recipe == "clip":
        return None, clip_args(world, folder, f"iterations={STEPS}", "data.shuffle_buffer=0",
                               "augment={scale: [1.0, 1.0], ratio: [1.0, 1.0], flip: 0.0}", *common)
    return None, stego_args(world, folder, f"iterations={STEPS}", "head.dropout=0.0", "loss.negatives=0",
                      "loss.centering=false", *common)


WORKER = """
import sys, torch
torch.set_num_threads(1)
recipe, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
if recipe == "unimatch_v2":  # the strong view's colour draws come from each rank's generator: identity
    from leafseg.data.augment import StrongAugment
    StrongAugment.forward = lambda self, images: images.float().clamp(0.0, 1.0)
if recipe == "stego":  # the sampled points come from each rank's generator: one fixed grid for every image
    import leafseg.losses.stego as stego_loss
    def grid_points(batch, samples, device=None, generator=None):
        line = torch.linspace(-0.9, 0.9, samples, device=device)
        grid = torch.stack(torch.meshgrid(line, line, indexing="xy"), -1)
        return grid.expand(batch, samples, samples, 2).clone()
    stego_loss.random_points = grid_points
from leafseg.registry import recipe_module
recipe_module(recipe).run(config if config != "-" else None, overrides)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: Path, recipe: str, config: str | None, overrides: list[str], world_size: int) -> list:
    """Start the run in ``world_size`` processes (torchrun's environment when more than one)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if world_size > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world_size))
    return [subprocess.Popen([sys.executable, str(worker), recipe, config or "-", *overrides],
                             env=dict(env, RANK=str(r), LOCAL_RANK=str(r)) if world_size > 1 else env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for r in range(world_size)]


def float_tensors(path: Path) -> dict[str, torch.Tensor]:
    model = read_exported(path)["model"]
    return {k: v for k, v in model.items() if torch.is_tensor(v) and v.is_floating_point()}


@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_like_one_with_the_same_global_batch(case, world, teacher, clip, tmp_path):
    recipe = case.partition(":")[0]
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    runs = {}
    for name, world_size in (("one", 1), ("two", 2)):
        folder = tmp_path / name
        folder.mkdir()
        config, overrides = settings(case, world, teacher, clip, folder)
        overrides = [*overrides, f"out_dir={folder / 'run'}", f"batch_size={GLOBAL_BATCH // world_size}"]
        runs[name] = (folder / "run", launch(worker, recipe, config, overrides, world_size))
    for _, procs in runs.values():
        for p in procs:
            out = p.communicate(timeout=600)[0]
            assert p.returncode == 0, out[-3000:]
    for weights in WEIGHTS[recipe]:
        one, two = (float_tensors(runs[name][0] / weights) for name in ("one", "two"))
        assert one.keys() == two.keys() and one
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=RTOL, atol=LOOSER.get(recipe, ATOL),
                                       msg=lambda m, k=key, w=weights: f"{w} {k}: {m}")


def run_two_ranks(worker: str, inputs: tuple, folder: Path) -> None:
    """Run the script ``worker`` as ranks 0 and 1 of a gloo group, each with argv (inputs file, rank, output
    file ``folder/rank<r>.pt``); fail with its output if a rank fails."""
    torch.save(inputs, folder / "inputs.pt")
    (folder / "worker.py").write_text(worker)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(folder / "worker.py"), str(folder / "inputs.pt"), str(r),
                               str(folder / f"rank{r}.pt")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for p in procs:
        out = p.communicate(timeout=120)[0]
        assert p.returncode == 0, out[-3000:]


MASK_WORKER = """
import sys, torch, torch.distributed as dist
torch.set_num_threads(1)
from leafseg.losses.matching import MaskMatchingLoss
rank, logits, regions = int(sys.argv[2]), *torch.load(sys.argv[1])
mine = slice(2 * rank, 2 * rank + 2)
def grad():
    x = logits[mine].clone().requires_grad_(True)
    MaskMatchingLoss(4)(x, regions[mine])["loss"].backward()
    return x.grad
local = grad()  # before joining the group: the rank's own mask count
dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=2)
torch.save({"global": grad(), "local": local}, sys.argv[3])
dist.destroy_process_group()
"""


def test_sseg_mask_count_is_averaged_over_ranks(tmp_path):
    """S-Seg's mask loss divides by the matched masks of the whole batch: rank 0's two images hold 4 regions
    each, rank 1's one each, and the DDP-averaged gradient of the two ranks' losses equals the gradient of
    one process's loss over all four images (with each rank's own count it would not)."""
    from leafseg.losses.matching import MaskMatchingLoss

    logits = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    regions = torch.zeros(4, 8, 8, dtype=torch.long)
    regions[:2, :4, 4:], regions[:2, 4:, :4], regions[:2, 4:, 4:] = 1, 2, 3  # rank 0: 4 regions per image
    run_two_ranks(MASK_WORKER, (logits, regions), tmp_path)
    full = logits.clone().requires_grad_(True)
    MaskMatchingLoss(4)(full, regions)["loss"].backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    ddp = torch.cat([g["global"] for g in ranks]) / 2  # DDP averages the ranks' gradients
    torch.testing.assert_close(ddp, full.grad, rtol=1e-5, atol=1e-7)
    naive = torch.cat([g["local"] for g in ranks]) / 2
    assert not torch.allclose(naive, full.grad, rtol=1e-3, atol=1e-6)  # 8 and 2 masks against 5 on average


NOUN_WORKER = """
import sys, torch, torch.distributed as dist
torch.set_num_threads(1)
from leafseg.losses.noun_region import noun_region_loss
rank, regions, rmask, nouns, nmask = int(sys.argv[2]), *torch.load(sys.argv[1])
mine = slice(2 * rank, 2 * rank + 2)
dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=2)
grads = []
for direction in ("noun_to_region", "both"):
    r, n = regions[mine].clone().requires_grad_(True), nouns[mine].clone().requires_grad_(True)
    noun_region_loss(r, rmask[mine], n, nmask[mine], 10.0, direction=direction).loss.backward()
    grads.append((r.grad, n.grad))
torch.save(grads, sys.argv[3])
dist.destroy_process_group()
"""


def test_noun_region_loss_is_averaged_over_the_kept_pairs_of_every_rank(tmp_path):
    """The noun-region loss is a mean over the kept pairs of the whole batch: rank 0 keeps both its pairs,
    rank 1 one of two (its second caption has no noun), and the DDP-averaged gradients of the two ranks'
    losses equal the gradients of one process's loss over all four pairs (with each rank's own count,
    rank 1's pair would weigh twice as much)."""
    from leafseg.losses.noun_region import noun_region_loss

    g = torch.Generator().manual_seed(0)
    regions, nouns = torch.randn(4, 3, 8, generator=g), torch.randn(4, 2, 8, generator=g)
    rmask, nmask = torch.ones(4, 3, dtype=torch.bool), torch.ones(4, 2, dtype=torch.bool)
    nmask[3] = False
    run_two_ranks(NOUN_WORKER, (regions, rmask, nouns, nmask), tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for i, direction in enumerate(("noun_to_region", "both")):
        r, n = regions.clone().requires_grad_(True), nouns.clone().requires_grad_(True)
        out = noun_region_loss(r, rmask, n, nmask, 10.0, direction=direction)
        assert out.keep.tolist() == [True, True, True, False]
        out.loss.backward()
        for j, full in enumerate((r.grad, n.grad)):
            ddp = torch.cat([rank[i][j] for rank in ranks]) / 2  # DDP averages the ranks' gradients
            torch.testing.assert_close(ddp, full, rtol=1e-5, atol=1e-7)
