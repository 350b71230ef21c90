"""The UniMatch V2 speed benchmark (benchmarks/unimatch_speed.py) and its re-creation of the authors'
training step (benchmarks/unimatch_authors_step.py): the step computes the recipe's loss and trains the
same parameters, the data path yields what the step expects, and the benchmark's last line has its form."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from unimatch_tiny import TINY

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH_DIR) not in sys.path:  # the speed script imports the step module beside it
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def authors():
    return _load("unimatch_authors_step")


@pytest.fixture(scope="module")
def speed():
    return _load("unimatch_speed")


def tiny_cfg(**changes):
    from leafseg.recipes.unimatch_v2 import UniMatchV2Config

    keys = ("backbone", "weights", "arch_overrides", "layers", "crop_size", "batch_size")
    return UniMatchV2Config(**{k: TINY[k] for k in keys}, num_labeled=1, **changes)


def fixed_batch(b: int = 2, s: int = 32, classes: int = 5):
    g = torch.Generator().manual_seed(0)
    img_x, img_w = torch.rand(b, 3, s, s, generator=g), torch.rand(b, 3, s, s, generator=g)
    mask_x = torch.randint(0, classes, (b, s, s), generator=g)
    mask_x[:, :, -5:] = 255
    ignore = torch.zeros(b, s, s, dtype=torch.long)
    ignore[:, -7:] = 255  # padding at the bottom
    return img_x, mask_x, img_w, ignore


def test_authors_loss_equals_the_recipe_loss_on_the_same_views(authors):
    """Identity strong views, no CutMix, no dropout: their two-forward loss is the recipe's one-forward loss."""
    from leafseg.losses import build_loss
    from leafseg.recipes.unimatch_v2 import build_segmenter, train_step

    torch.manual_seed(0)
    cfg = tiny_cfg(cutmix_p=0.0, complementary_dropout=False, conf_thresh=0.0)
    model = build_segmenter(cfg, 5, "cpu")
    step = authors.AuthorsStep(copy.deepcopy(model), "cpu", conf_thresh=0.0, comp_drop=False)
    img_x, mask_x, img_w, ignore = fixed_batch()
    none = torch.zeros(img_w.shape[0], *img_w.shape[-2:])
    theirs, loss_x, _, _, _ = step.losses((img_x, mask_x), (img_w, img_w.clone(), img_w.clone(), ignore, none, none))
    ours, parts = train_step(model, step.ema, {"image": img_x, "mask": mask_x}, {"image": img_w, "ignore": ignore},
                             cfg=cfg, criterion=build_loss("ce", ignore_index=255), strong=lambda x: x,
                             amp_dtype=None, device=torch.device("cpu"))
    assert float(parts["loss_u"]) > 0  # threshold 0: every non-padded pixel counts
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-5, abs=1e-6)
    assert loss_x.item() == pytest.approx(float(parts["loss_x"]), rel=1e-5, abs=1e-6)


def test_cutmix_pastes_the_reversed_batch_into_views_and_targets(authors):
    x = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 4).clone()
    box = torch.zeros(3, 4, 4)
    box[0, :2, :2] = 1
    out = authors.paste_reversed_(x, box)
    assert (out[0, :, :2, :2] == 2).all() and (out[0, :, 2:, :] == 0).all() and (out[1] == 1).all()
    labels = torch.arange(3).view(3, 1, 1).expand(3, 4, 4).clone()
    assert (authors.paste_reversed_(labels, box)[0, :2, :2] == 2).all()


def test_comp_drop_scales_are_complementary(authors):
    scale = authors.comp_drop_scale(8, 16, "cpu")
    first, second = scale[:4], scale[4:]
    kept = (first == 1).all(1)
    assert int(kept.sum()) == 2 and ((first[~kept] == 0) | (first[~kept] == 2)).all()
    assert torch.equal(second[~kept], 2 - first[~kept]) and (second[kept] == 1).all()


def test_both_steps_train_the_same_parameters(authors):
    from leafseg.losses import build_loss
    from leafseg.recipes.unimatch_v2 import build_model, train_step
    from leafseg.training import ModelEMA

    torch.manual_seed(0)
    cfg = tiny_cfg(conf_thresh=0.0)
    model, optimizer = build_model(cfg, 5, "cpu")
    start = copy.deepcopy(model.state_dict())
    step = authors.AuthorsStep(copy.deepcopy(model), "cpu", conf_thresh=0.0)
    img_x, mask_x, img_w, ignore = fixed_batch()
    box = torch.zeros(img_w.shape[0], *img_w.shape[-2:])
    box[:, 4:12, 4:12] = 1
    step((img_x, mask_x), (img_w, img_w.clone(), img_w.clone(), ignore, box, box.clone()), 0, 10)
    loss, _ = train_step(model, ModelEMA(model).module, {"image": img_x, "mask": mask_x},
                         {"image": img_w, "ignore": ignore}, cfg=cfg, criterion=build_loss("ce", ignore_index=255),
                         strong=lambda x: x, amp_dtype=None, device=torch.device("cpu"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    def changed(m):
        return {n for n, p in m.named_parameters() if not torch.equal(p.detach(), start[n])}

    ours, theirs = changed(model), changed(step.model)
    assert ours and ours == theirs
    assert any(n.startswith("head.") for n in ours) and any(n.startswith("encoder.") for n in ours)
    lrs = [g["lr"] for g in step.optimizer.param_groups]
    assert lrs[1] == pytest.approx(40 * lrs[0])


def test_authors_dataset_gives_what_the_step_expects(authors, speed, tmp_path):
    voc, lab, unl = speed.write_images(tmp_path, 4, (40, 30))
    crop = 56  # larger than every rescaled image: padding is certain
    img, mask = authors.AuthorsSemiDataset(voc, lab, "train_l", crop)[0]
    assert img.shape == (3, crop, crop) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert mask.dtype == torch.long and (mask == 255).any()
    weak, s1, s2, ignore, box1, box2 = authors.AuthorsSemiDataset(voc, unl, "train_u", crop)[1]
    assert weak.shape == s1.shape == s2.shape == (3, crop, crop)
    assert set(ignore.unique().tolist()) == {0, 255} and box1.shape == box2.shape == (crop, crop)
    assert set(box1.unique().tolist()) <= {0.0, 1.0}


def test_quick_run_prints_the_figures_as_last_line(speed, capsys):
    torch.set_num_threads(1)
    line = speed.main(["--quick", "--device", "cpu", "--workers", "0", "--images", "4"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    pattern = (r"unimatch_speed \[cpu, 1 thread, 0 worker/loader, load [\d.]+->[\d.]+\]: dinov2_vits14 \+ DPT, "
               r"crop 28, batch 2\+2, median of 5 rounds x 1 it: leafseg default ([\d.]+) s/it \(([\d.]+)-([\d.]+)\) "
               r"\| authors' step ([\d.]+) s/it \(([\d.]+)-([\d.]+)\) \| speed-up x([\d.]+) \(([\d.]+)-([\d.]+)\) "
               r"\| torch \S+")
    match = re.fullmatch(pattern, line)
    assert match, line
    ours, olo, ohi, theirs, tlo, thi, ratio, rlo, rhi = map(float, match.groups())
    assert olo <= ours <= ohi and tlo <= theirs <= thi and rlo <= ratio <= rhi and ratio > 0
