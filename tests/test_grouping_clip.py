"""Group, then recognise: the ``grouping_clip`` method paints each region's class scores over exactly that
region's pixels; the recipe adapts only the region tokens and the temperature, lowers its loss on a tiny
synthetic world, selects the three loss directions; the method runs through `leafseg eval` and
`leafseg segment` (--classes, --classes-file, exported weights); bad options are ConfigErrors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grouping_clip_tiny import gclip_args, write_tiny_clip
from leafseg.backbones import make_random_checkpoint
from leafseg.cli import main
from leafseg.data.imagetext import collate_image_text
from leafseg.data.io import read_image, read_mask
from leafseg.errors import ConfigError
from leafseg.eval.grouping_clip import GroupingClip, paint_regions
from leafseg.eval.harness import evaluate
from leafseg.eval.methods import build_method, method_options
from leafseg.eval.protocol import Protocol, get_preset
from leafseg.grouping import Regions
from leafseg.recipes import grouping_clip as recipe
from leafseg.training import load_config, read_exported
from sseg_tiny import write_world

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["sky", "car, automobile", "tree"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return make_random_checkpoint("dino_vits8", tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def trained(world, clip_dir, tmp_path_factory):
    """40 steps on the same 16 pairs at a constant learning rate, evaluated at the end."""
    out = tmp_path_factory.mktemp("trained") / "run"
    return recipe.run(None, gclip_args(world, clip_dir, out, "iterations=40", "batch_size=16", "shuffle_buffer=0",
                                       "lr=0.05", "min_lr_ratio=1"))


# -- the method -----------------------------------------------------------------------------
def test_paint_regions_gives_every_pixel_its_regions_scores():
    scores = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # (B, M, Q)
    labels = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])  # (B, H, W)
    out = paint_regions(scores, labels)
    assert out.shape == (2, 4, 2, 2)
    for b in range(2):
        for y in range(2):
            for x in range(2):
                assert torch.equal(out[b, :, y, x], scores[b, labels[b, y, x]])


class HandRegions(nn.Module):
    """A grouper that returns fixed regions: on the 4 x 4 grid, quadrants 0 (top left) and 1 (top right),
    region 2 the bottom half, region 3 empty; at 32 x 32 pixels the same, except that a 3-pixel band of
    region 2 reaches into the top half (so painting must follow M^H, not M^L)."""

    def forward(self, images):
        b = images.shape[0]
        low = torch.full((4, 4), 2)
        low[:2, :2], low[:2, 2:] = 0, 1
        high = low.repeat_interleave(8, 0).repeat_interleave(8, 1)
        high[13:16, :] = 2
        present = torch.tensor([True, True, True, False])
        return Regions(labels_low=low.expand(b, 4, 4).clone(), labels_high=high.expand(b, 32, 32).clone(),
                       present=present.expand(b, 4).clone(), centroids=torch.zeros(b, 4, 1))


def test_each_region_takes_its_argmax_class_over_exactly_its_pixels(clip_dir):
    seg = build_method("grouping_clip", "clip_vitb16", str(clip_dir), group_backbone="pixels4", num_regions=4)
    seg.grouper = HandRegions()
    seg.prepare(NAMES, Protocol(logit_scale=50.0))
    assert seg.query_classes.tolist() == [0, 1, 1, 2]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        regions = HandRegions()(images)
        masks = regions.low.float()
        alone = torch.cat([seg.regions(images, masks[:, m:m + 1]) for m in range(3)], 1)  # one region per pass
        # name embeddings set by hand so that the classes are decided, not near-tied cosines of random weights:
        # image 0's regions 0, 1, 2 are exactly the names of sky, car (first synonym) and tree; the second car
        # synonym lies between regions 1 and 2, so the max over synonyms has work to do
        own = torch.nn.functional.normalize(alone[0], dim=-1)
        between = torch.nn.functional.normalize(own[1] + own[2], dim=-1)
        seg.text = torch.stack([own[0], own[1], between, own[2]]).to(seg.text)
        logits = seg(images)
    assert logits.shape == (2, 4, 32, 32)
    expected = 50.0 * alone @ seg.text.t()  # (B, 3, Q): cosines of each region encoded alone
    classes = seg.query_classes[expected.argmax(-1)]  # (B, 3) the class of each region's best name
    for b in range(2):
        for m in range(3):
            inside = regions.labels_high[b] == m
            assert torch.allclose(logits[b][:, inside], expected[b, m][:, None].expand(-1, int(inside.sum())),
                                  atol=1e-4)
            # the painted argmax is the region's class on its pixels (synonyms merged: max over names)
            assert (seg.query_classes[logits[b].argmax(0)][inside] == classes[b, m]).all()
    assert classes[0].tolist() == [0, 1, 2]  # each region of image 0 is its own name's class
    truth = torch.stack([classes[b][regions.labels_high[b]] for b in range(2)])  # (B, H, W)
    data = Items(images, truth)
    seg.prepare = lambda names, protocol: None  # the harness keeps the hand-set names instead of re-embedding them
    report = evaluate(seg, data, Protocol(logit_scale=50.0, workers=0, batch_size=2), progress=False,
                      class_names=NAMES)
    assert report.acc == 1.0  # the harness's softmax, synonym merge and argmax reproduce the region classes


class Items(torch.utils.data.Dataset):
    """Images with given label maps, for the harness."""

    classes = ("sky", "car", "tree")
    name = "hand"

    def __init__(self, images, masks):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "name": f"{i}"}


def test_dino_grouping_paints_at_image_resolution(clip_dir, dino_dir):
    seg = build_method("grouping_clip", "clip_vitb16", str(clip_dir), group_backbone="dino_vits8",
                       group_weights=str(dino_dir), num_regions=5, masked_blocks=1)
    seg.prepare(NAMES, get_preset("groupvit"))
    images = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = seg(images)
        regions = seg.grouper(images)
    assert logits.shape == (1, 4, 40, 56) and torch.isfinite(logits).all()
    assert logits.abs().max() <= 100 + 1e-3  # the protocol's logit scale times a cosine
    for m in regions.labels_high.unique().tolist():  # one score vector per region, painted on its pixels
        pixels = logits[0][:, regions.labels_high[0] == m]
        assert torch.equal(pixels, pixels[:, :1].expand_as(pixels))


# -- the recipe -----------------------------------------------------------------------------
def test_only_the_tokens_and_the_temperature_learn(world, clip_dir, dino_dir, tmp_path):
    cfg = load_config(recipe.GroupingClipConfig, None, gclip_args(world, clip_dir, tmp_path / "run") + [
        f"grouping={{backbone: dino_vits8, weights: {dino_dir}, num_regions: 4}}", "recognition.masked_blocks=1"])
    seg = recipe.build_segmenter(cfg, torch.device("cpu"))
    frozen = {k: v.clone() for k, v in seg.state_dict().items()}
    assert not any(p.requires_grad for p in seg.parameters())
    adaptation = recipe.RegionAdaptation(seg.regions.initial_region_tokens(4), direction="noun_to_region")
    start = {k: v.clone() for k, v in adaptation.state_dict().items()}
    optimizer = torch.optim.AdamW(recipe.param_groups(adaptation, cfg), lr=0.05)
    source = recipe.image_text_source(cfg, shuffle=False)
    batch = next(iter(torch.utils.data.DataLoader(source, batch_size=8, collate_fn=collate_image_text)))
    vocab = {"sky", "grass", "ball", "box", "tree", "star", "car", "house", "flower", "water", "sand", "wall"}
    table = recipe.NounTable(seg.encoder.encode_text, "single")
    for _ in range(3):
        loss, parts = recipe.train_step(adaptation, seg, batch, table=table, vocab=vocab, cfg=cfg, device="cpu")
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in seg.parameters())  # CLIP and DINO: no gradient at all
        assert adaptation.tokens.grad.abs().sum() > 0 and adaptation.loss.logit_scale.grad != 0
        optimizer.step()
    after = seg.state_dict()
    assert after.keys() == frozen.keys() and all(torch.equal(after[k], frozen[k]) for k in frozen)  # bit-identical
    assert not torch.equal(adaptation.tokens, start["tokens"])
    assert not torch.equal(adaptation.loss.logit_scale, start["loss.logit_scale"])
    assert float(parts["pairs_kept"]) > 0


def test_training_lowers_the_loss_and_exports_the_tokens(trained, clip_dir):
    losses = [row["loss"] for row in trained["train_log"]]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.3
    exported = read_exported(trained["weights"])
    assert exported["recipe"] == "grouping_clip" and set(exported["model"]) == {"tokens", "loss.logit_scale"}
    tokens = exported["model"]["tokens"]
    assert tokens.shape == (4, 128) and not torch.allclose(tokens[0], tokens[1])  # copies of CLS no more
    assert exported["config"]["clip"]["weights"] == str(clip_dir) and 0.0 <= trained["miou"] <= 1.0


@pytest.mark.parametrize("direction", ["noun_to_region", "region_to_noun", "both"])
def test_each_loss_direction_is_selectable(direction, world, clip_dir, tmp_path):
    out = tmp_path / direction
    result = recipe.run(None, gclip_args(world, clip_dir, out, "iterations=1", f"loss.direction={direction}",
                                         "eval.dataset=null"))
    first = result["train_log"][0]["loss"]
    cfg = load_config(recipe.GroupingClipConfig, out / "config.yaml")
    assert cfg.loss.direction == direction
    # the logged first loss is the loss of that direction on the first batch, computed here from scratch
    seg = recipe.build_segmenter(cfg, torch.device("cpu"))
    source = recipe.image_text_source(cfg)
    source.set_epoch(0)
    batch = next(iter(torch.utils.data.DataLoader(source, batch_size=4, collate_fn=collate_image_text)))
    vocab = set((out / "nouns.txt").read_text().split())
    with torch.no_grad():
        regions = seg.grouper(batch["image"])
        emb = seg.regions(batch["image"], regions.low.float(), region_tokens=seg.regions.initial_region_tokens(4))
        table = recipe.NounTable(seg.encoder.encode_text, "single")
        nouns = recipe.noun_embeddings(batch["caption"], vocab, table, "name")
        from leafseg.losses.noun_region import noun_region_loss

        losses = {d: float(noun_region_loss(emb, regions.present, nouns.embeddings, nouns.mask, 1 / 0.07,
                                            direction=d).loss) for d in ("noun_to_region", "region_to_noun", "both")}
    assert first == pytest.approx(losses[direction], rel=1e-5)
    assert len({round(v, 4) for v in losses.values()}) == 3  # the directions give different losses


# -- leafseg eval and leafseg segment --------------------------------------------------------
def test_leafseg_eval_grouping_clip_with_trained_tokens(world, clip_dir, dino_dir, trained, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "grouping_clip", "synthetic", str(world), "--backbone", "clip_vitb16", "--weights",
                 str(clip_dir), "--option", "group_backbone=pixels4", "--option", f"tokens={trained['weights']}",
                 "--out", str(out), "--quiet", "short_side=null", "mode=whole", "workers=0", "batch_size=8"])
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "grouping_clip" and m["protocol"]["name"] == "groupvit" and m["num_images"] == 8
    assert m["miou"] == trained["miou"]  # the run's tokens, grouping and protocol: the run's own figure
    assert "num_regions" in method_options("grouping_clip") and "tokens" in method_options("grouping_clip")
    code = main(["eval", "grouping_clip", "synthetic", str(world), "--weights", str(clip_dir), "--option",
                 "group_backbone=dino_vits8", "--option", f"group_weights={dino_dir}", "--option", "num_regions=3",
                 "--out", str(tmp_path / "dino"), "--quiet", "short_side=64", "crop=32", "stride=16", "workers=0"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "dino" / "metrics.json").read_text())["protocol"]["mode"] == "slide"


def test_leafseg_segment_with_classes_and_a_classes_file(world, clip_dir, trained, tmp_path, capsys):
    images = [str(world / "images" / "val" / f"{1000000 + i}.png") for i in range(2)]
    common = ["--method", "grouping_clip", "--weights", str(clip_dir), "--option", "group_backbone=pixels4",
              "--option", "num_regions=4"]
    code = main(["segment", *images, *common, "--classes", "sky,grass,ball", "--out", str(tmp_path / "a")])
    assert code == 0, capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("sky\ngrass, lawn\n\nball\n")
    code = main(["segment", *images, *common, "--classes-file", str(names), "--out", str(tmp_path / "b")])
    assert code == 0, capsys.readouterr().err
    for folder, legend in (("a", ["sky", "grass", "ball"]), ("b", ["sky", "grass, lawn", "ball"])):
        for image in images:
            stem = image.rsplit("/", 1)[1][:-4]
            labels = read_mask(tmp_path / folder / f"{stem}_labels.png")
            assert labels.shape == read_image(image).shape[:2] and labels.max() < 3
            table = json.loads((tmp_path / folder / f"{stem}_classes.json").read_text())
            assert [row["name"] for row in table] == legend and sum(r["share"] for r in table) == pytest.approx(1)
            assert (tmp_path / folder / f"{stem}_overlay.png").is_file()
    code = main(["segment", images[0], "--weights", trained["weights"], "--classes", "sky,grass",
                 "--out", str(tmp_path / "c")])  # the exported run through --method model
    assert code == 0, capsys.readouterr().err
    assert [r["name"] for r in json.loads((tmp_path / "c" / "1000000_classes.json").read_text())] == ["sky", "grass"]


@pytest.mark.parametrize("argv, message", [
    (["--method", "grouping_clip"], "open-vocabulary model: give class names"),
    (["--method", "kmeans", "--classes", "a,b"], "outputs cluster ids"),
    (["--classes", "a,b"], "--method model needs --weights"),
    (["--method", "grouping_clip", "--classes-file", "none.txt"], "--classes-file none.txt: file not found"),
    (["--method", "grouping_clip", "--classes", "a", "--option", "mode=patch"], "region mode must be one of"),
    (["--method", "grouping_clip", "--classes", "a", "--option", "tokens=none.safetensors"], "file not found"),
])
def test_segment_mistakes_are_one_line_errors(argv, message, world, clip_dir, capsys):
    image = str(world / "images" / "val" / "1000000.png")
    weights = ["--weights", str(clip_dir), "--option", "group_backbone=pixels4"] if "grouping_clip" in argv else []
    weights += ["--backbone", "pixels8"] if "kmeans" in argv else []
    assert main(["segment", image, *argv, *weights]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leafseg: error: ") and message in err


def test_segment_refuses_classes_and_a_classes_file_together_and_twin_names(world, clip_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", "x.png", "--classes", "a", "--classes-file", "f.txt"])
    assert "not allowed with argument" in capsys.readouterr().err
    for sub in ("p", "q"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.png").write_bytes((world / "images" / "val" / "1000000.png").read_bytes())
    assert main(["segment", str(tmp_path / "p" / "x.png"), str(tmp_path / "q" / "x.png"), "--method", "sclip",
                 "--weights", str(clip_dir), "--classes", "a"]) == 2
    assert "share a file name (x)" in capsys.readouterr().err


# -- mistakes -------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"mode": "patch"}, "region mode must be one of context, pixels, drop"),
    ({"masked_blocks": 0}, "masked_blocks must be an integer in 1..2 or 'all'"),
    ({"masked_blocks": 5}, "masked_blocks must be an integer in 1..2"),
    ({"threshold": 0}, "threshold must be in"),
    ({"num_regions": 0}, "num_regions must be a positive integer"),
    ({"group_kind": "cls"}, "group_kind must be one of tokens"),
    ({"group_layer": "last"}, "group_layer must be a block index"),
    ({"group_backbone": "dino_vits9"}, "Unknown backbone 'dino_vits9'"),
    ({"tokens": "missing.safetensors"}, "option tokens: file not found"),
    ({"k": 27}, "takes no option k"),
])
def test_bad_method_options_are_config_errors(options, message, clip_dir):
    with pytest.raises(ConfigError, match=message):
        build_method("grouping_clip", "clip_vitb16", str(clip_dir), **options)


def test_a_non_clip_backbone_and_foreign_tokens_are_refused(clip_dir, dino_dir, trained, tmp_path):
    with pytest.raises(ConfigError, match="needs a CLIP encoder"):
        build_method("grouping_clip", "dino_vits8", str(dino_dir), group_backbone="pixels4")
    clip = build_method("clearclip", "clip_vitb16", str(clip_dir)).encoder
    with pytest.raises(ConfigError, match=r"region tokens must be \(M, 128\)"):
        GroupingClip(clip, group_backbone="pixels4", tokens=torch.zeros(4, 64))
    with pytest.raises(ConfigError, match="num_regions=4 but the region tokens hold 3"):
        GroupingClip(clip, group_backbone="pixels4", tokens=torch.zeros(3, 128), num_regions=4)
    from leafseg.training import export_weights

    other = export_weights(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, recipe="sseg", config={})
    with pytest.raises(ConfigError, match="not the region tokens of a grouping_clip run"):
        build_method("grouping_clip", "clip_vitb16", str(clip_dir), group_backbone="pixels4", tokens=str(other))


@pytest.mark.parametrize("override, message", [
    ("recognition.mode=patch", "recognition.mode: must be one of"),
    ("recognition.masked_blocks=0", "masked_blocks must be at least 1 or 'all'"),
    ("recognition.masked_blocks=some", "recognition.masked_blocks: expected"),
    ("loss.direction=both_ways", "loss.direction: must be one of"),
    ("loss.templates=many", "loss.templates must be one of"),
    ("grouping.num_regions=0", "grouping.num_regions must be at least 1"),
    ("clip.backbone=dino_vits8", "clip.backbone must be a CLIP"),
    ("grouping.backbone=dino_vits9", "Unknown backbone"),
    ("clip.weigths=x", "did you mean weights"),
])
def test_bad_config_values_are_config_errors(override, message):
    from leafseg.registry import load_config_of

    with pytest.raises(ConfigError, match=message):
        load_config_of("grouping_clip", None, [override])


def test_shipped_synthetic_config_names_its_clip_folder():
    from leafseg.registry import load_config_of

    cfg = load_config_of("grouping_clip", "configs/grouping_clip/synthetic.yaml")
    assert cfg.clip.weights.endswith("clip") and cfg.eval.resolve("synthetic").mode == "whole"
    paper = load_config_of("grouping_clip", "configs/grouping_clip/cc12m_vitb16.yaml")
    assert (paper.lr, paper.weight_decay, paper.image_size, paper.batch_size * 8) == (5e-4, 0.01, 224, 2048)
    assert paper.grouping.num_regions == 27 and paper.loss.direction == "noun_to_region"


def test_segment_labels_follow_the_regions(world, clip_dir, tmp_path, capsys):
    """The label PNG of `leafseg segment` is the region map coloured by each region's class."""
    image = world / "images" / "val" / "1000001.png"
    seg = build_method("grouping_clip", "clip_vitb16", str(clip_dir), group_backbone="pixels4", num_regions=4)
    seg.prepare(["sky", "grass", "ball"], Protocol())
    x = torch.from_numpy(read_image(image)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        regions, scores = seg.region_scores(x)
    expected = F.embedding(regions.labels_high[0], scores[0].argmax(-1)[:, None])[..., 0].numpy()
    code = main(["segment", str(image), "--method", "grouping_clip", "--weights", str(clip_dir), "--option",
                 "group_backbone=pixels4", "--option", "num_regions=4", "--classes", "sky,grass,ball",
                 "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert np.array_equal(read_mask(tmp_path / "1000001_labels.png"), expected)
