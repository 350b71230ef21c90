import argparse
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from leafseg.backbones import make_random_checkpoint
from leafseg.data import SyntheticDataset, SyntheticWorld
from leafseg.data.io import DataError
from leafseg.eval.background import apply_background, prompt_classes
from leafseg.eval.cli_eval import register_cli
from leafseg.eval.harness import center_crop, evaluate
from leafseg.eval.methods import ModelSegmenter, build_method
from leafseg.eval.protocol import Protocol, get_preset

SIZE = 48


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return SyntheticWorld(seed=0, size=SIZE).write(tmp_path_factory.mktemp("world"), 6, split="val")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_random_checkpoint("clip_vitb16", tmp_path_factory.mktemp("clip"))


def synthetic(root):
    try:
        from leafseg.data.datasets import build_dataset
    except ImportError:
        return SyntheticDataset(root, "val")
    return build_dataset("synthetic", root, split="val")


class Encoded(torch.utils.data.Dataset):
    """The synthetic world with each pixel's label written into the red channel (for oracle models)."""

    def __init__(self, base, has_background=False, bad=(), stand_in=()):
        self.base, self.classes, self.name = base, tuple(base.classes), "encoded"
        self.has_background, self.ignore_index = has_background, 255
        self.bad, self.stand_in = set(bad), set(stand_in)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i in self.bad:
            raise DataError(f"sample {i}: cannot decode")
        item = dict(self.base[i])
        item["image"] = item["image"].clone()
        item["image"][0] = item["mask"].float() / 255
        item["skipped"] = f"sample {i} is broken" if i in self.stand_in else ""
        return item


def oracle_logits(x, num_classes, offset=0):
    """One-hot logits of the labels in the red channel; labels below ``offset`` get uniform logits."""
    labels = (x[:, 0] * 255).round().long() - offset
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    return torch.where((labels >= 0)[:, None], 10 * onehot, torch.zeros_like(onehot))


def numpy_miou(pred_dir, mask_dir, names, num_classes):
    conf = np.zeros((num_classes, num_classes), np.int64)
    for name in names:
        pred = np.array(Image.open(pred_dir / f"{name}.png")).astype(np.int64)
        gt = np.array(Image.open(mask_dir / f"{name}.png")).astype(np.int64)
        valid = gt != 255
        np.add.at(conf, (gt[valid], pred[valid]), 1)
    tp = np.diag(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (conf.sum(0) + conf.sum(1) - tp)
    return float(np.nanmean(iou))


def tiny(preset="sclip-family", **kw):
    base = dict(short_side=64, crop=32, stride=16, workers=0)
    return get_preset(preset).with_overrides({**base, **kw})


# -- background rules ----------------------------------------------------------------------
def test_background_rules_on_toy_probabilities():
    fg = torch.tensor([[0.9, 0.6, 0.3], [0.1, 0.4, 0.7]]).view(1, 2, 1, 3)
    assert apply_background(fg, "threshold", threshold=0.65).view(-1).tolist() == [1, 0, 2]
    assert apply_background(fg, "constant", value=0.5).view(-1).tolist() == [1, 1, 2]
    assert apply_background(fg, "constant", value=0.8).view(-1).tolist() == [1, 0, 0]
    assert apply_background(fg, "none").view(-1).tolist() == [0, 0, 1]
    full = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.6], [0.2, 0.5, 0.3]]).view(1, 3, 1, 3)
    assert apply_background(full, "stuff", threshold=0.55).view(-1).tolist() == [0, 0, 1]
    assert apply_background(full, "stuff", threshold=0.0).view(-1).tolist() == [0, 2, 1]


def test_prompt_classes():
    classes = ("background", "cat", "dog")
    assert prompt_classes(classes, True, "none") == list(classes)
    assert prompt_classes(classes, True, "threshold") == ["cat", "dog"]
    assert prompt_classes(classes, True, "stuff", ("sky", "wall")) == [["sky", "wall"], "cat", "dog"]
    with pytest.raises(ValueError, match="class 0 is background"):
        prompt_classes(("sky", "car"), False, "constant")


# -- end to end ----------------------------------------------------------------------------
def test_maskclip_end_to_end_reports(world, clip_dir, tmp_path):
    ds = synthetic(world)
    method = build_method("maskclip", "clip_vitb16", str(clip_dir))
    out = tmp_path / "mc"
    rep = evaluate(method, ds, tiny(pamr=True, pamr_iterations=2), out, progress=False, save_predictions=True,
                   method_name="maskclip", config={"seed": 3})
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_images"] == 6 and m["method"] == "maskclip" and m["dataset"] == rep.metrics["dataset"]
    assert set(m["per_class_iou"]) == set(ds.classes)
    assert m["images_per_second"] > 0 and m["run"]["seed"] == 3 and "environment" in m["run"]
    assert m["protocol"] == rep.protocol.to_dict()
    assert Protocol.from_dict(m["protocol"]) == rep.protocol and rep.protocol.pamr
    assert m["pixels"] == 6 * SIZE * SIZE and rep.confusion.sum() == 6 * SIZE * SIZE
    rows = list(csv.DictReader(open(out / "per_class.csv")))
    assert [r["class"] for r in rows] == list(ds.classes)
    assert len(list((out / "overlays").glob("*.png"))) == 4 and (out / "report.html").is_file()
    names = [p.stem for p in sorted((world / "images" / "val").glob("*.png"))]
    assert sorted(p.stem for p in (out / "predictions").glob("*.png")) == names
    expected = numpy_miou(out / "predictions", world / "masks" / "val", names, len(ds.classes))
    assert rep.miou == pytest.approx(expected, abs=1e-12) and m["miou"] == pytest.approx(expected, abs=1e-12)


def test_whole_and_slide_modes(world, clip_dir):
    ds = synthetic(world)
    method = build_method("maskclip", "clip_vitb16", str(clip_dir))
    shapes = []
    method.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape[-2:])))
    whole = evaluate(method, ds, tiny(mode="whole"), progress=False)
    assert set(shapes) == {(64, 64)}
    shapes.clear()
    slide = evaluate(method, ds, tiny(mode="slide", batch_windows=4), progress=False)
    assert set(shapes) == {(32, 32)} and len(shapes) == 6 * 3  # 9 windows per image, 4 per call
    fixed = evaluate(method, ds, tiny(short_side=None, size=[40, 56], mode="whole"), progress=False)
    for rep in (whole, slide, fixed):
        assert rep.metrics["num_images"] == 6 and 0 <= rep.miou <= 1


def test_kmeans_hungarian_and_oracle(world, tmp_path):
    ds = synthetic(world)
    method = build_method("kmeans", "pixels8", k=5)
    hung = evaluate(method, ds, Protocol(labelling="hungarian", workers=0), tmp_path / "h", progress=False,
                    save_predictions=True)
    oracle = evaluate(method, ds, Protocol(labelling="oracle", workers=0), tmp_path / "o", progress=False,
                      save_predictions=True)
    assert len(hung.metrics["assignment"]) == 5
    assert oracle.acc >= hung.acc and oracle.miou > 0.3
    names = [p.stem for p in sorted((world / "images" / "val").glob("*.png"))]
    for rep, sub in ((hung, "h"), (oracle, "o")):
        expected = numpy_miou(tmp_path / sub / "predictions", world / "masks" / "val", names, len(ds.classes))
        assert rep.miou == pytest.approx(expected, abs=1e-12)
    assert len(list((tmp_path / "h" / "clusters").glob("*.png"))) == 6


def test_cluster_method_protocol_errors(world):
    method = build_method("kmeans", "pixels8", k=3)
    with pytest.raises(ValueError, match="labelling"):
        evaluate(method, synthetic(world), Protocol(workers=0), progress=False)
    with pytest.raises(ValueError, match="mode=whole"):
        evaluate(method, synthetic(world), Protocol(workers=0, labelling="oracle", mode="slide"), progress=False)


@pytest.mark.parametrize("mode,batch,workers", [("whole", 1, 0), ("slide", 3, 2)])
def test_oracle_model_scores_exactly_one(world, mode, batch, workers):
    ds = Encoded(SyntheticDataset(world, "val"))
    c = len(ds.classes)
    method = ModelSegmenter(lambda x: oracle_logits(x, c), num_classes=c)
    protocol = Protocol(mode=mode, crop=32, stride=16, batch_size=batch, workers=workers)
    rep = evaluate(method, ds, protocol, progress=False)
    assert rep.miou == 1.0 and rep.acc == 1.0 and rep.metrics["num_images"] == 6


def test_threshold_background_through_the_harness(world):
    """Class 0 treated as background: foreground-only logits are uniform there, so the threshold picks it."""
    ds = Encoded(SyntheticDataset(world, "val"), has_background=True)
    fg = len(ds.classes) - 1
    method = ModelSegmenter(lambda x: oracle_logits(x, fg, offset=1), num_classes=fg)
    rep = evaluate(method, ds, Protocol(background="threshold", bg_threshold=0.5, workers=0), progress=False)
    assert rep.miou == 1.0
    constant = Protocol(background="constant", activation="sigmoid", bg_value=0.9, workers=0)
    assert evaluate(method, ds, constant, progress=False).miou == 1.0


def test_bad_samples_stop_or_are_counted(world):
    base = SyntheticDataset(world, "val")
    c = len(base.classes)
    method = ModelSegmenter(lambda x: oracle_logits(x, c))
    with pytest.raises(DataError, match="sample 2"):
        evaluate(method, Encoded(base, bad={2}), Protocol(workers=0), progress=False)
    rep = evaluate(method, Encoded(base, bad={2}, stand_in={4}), Protocol(workers=0), progress=False, skip_bad=True)
    assert rep.metrics["num_images"] == 4 and len(rep.skipped) == 2 and rep.miou == 1.0


def test_center_crop_sets_evaluation_size(world, tmp_path):
    image, mask = torch.rand(3, 40, 60), torch.randint(0, 3, (40, 60))
    img, msk = center_crop(image, mask, 32)
    assert img.shape == (3, 32, 32) and msk.shape == (32, 32)
    resized = F.interpolate(mask[None, None].float(), size=(32, 48), mode="nearest")[0, 0].long()
    assert torch.equal(msk, resized[:, 8:40])
    rep = evaluate(build_method("kmeans", "pixels8", k=4), synthetic(world), get_preset("stego").with_overrides(
        {"center_crop": 32, "workers": 0}), tmp_path, progress=False, save_predictions=True)
    assert rep.metrics["pixels"] == 6 * 32 * 32
    assert all(Image.open(p).size == (32, 32) for p in (tmp_path / "predictions").glob("*.png"))


def _distributed_worker(rank, world_size, init_file, root, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    rep = evaluate(build_method("kmeans", "pixels8", k=4), SyntheticDataset(root, "val"),
                   Protocol(labelling="oracle", workers=0), progress=False)
    if rank == 0:
        torch.save({"confusion": rep.confusion, "n": rep.metrics["num_images"]}, out_file)
    dist.destroy_process_group()


def test_metrics_all_reduced_across_processes(world, tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_distributed_worker, args=(2, str(tmp_path / "init"), str(world), str(tmp_path / "r.pt")),
                       nprocs=2, start_method="spawn")
    single = evaluate(build_method("kmeans", "pixels8", k=4), SyntheticDataset(world, "val"),
                      Protocol(labelling="oracle", workers=0), progress=False)
    got = torch.load(tmp_path / "r.pt")
    assert got["n"] == 6 and torch.equal(got["confusion"], single.confusion)


def test_cli_eval(world, tmp_path, capsys):
    try:
        from leafseg.data.datasets import build_dataset  # noqa: F401
    except ImportError:
        pytest.skip("dataset registry not available yet")
    parser = argparse.ArgumentParser(prog="leafseg")
    register_cli(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(["eval", "kmeans", "synthetic", str(world), "--backbone", "pixels8", "--option", "k=4",
                              "--preset", "stego", "--out", str(out), "--save-predictions", "--quiet",
                              "labelling=oracle", "center_crop=none", "workers=0"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and str(out / "metrics.json") in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"]["name"] == "stego" and m["protocol"]["labelling"] == "oracle"
    assert m["run"]["config"]["overrides"] == ["labelling=oracle", "center_crop=none", "workers=0"]
    assert len(list((out / "predictions").glob("*.png"))) == 6
