import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from leafseg.data.augment import StrongAugment
from leafseg.losses import (
    OhemCrossEntropy,
    build_loss,
    complementary_dropout_masks,
    confident_pixel_loss,
    cross_entropy,
    ohem_keep,
    pseudo_labels,
)
from leafseg.recipes.unimatch_v2 import UniMatchV2Config, build_model, run, train_step
from leafseg.training import ModelEMA
from unimatch_tiny import write_tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_complementary_dropout_masks():
    torch.manual_seed(0)
    pairs, channels = 64, 48
    masks = complementary_dropout_masks(pairs, channels)
    assert masks.shape == (2 * pairs, channels)
    first, second = masks[:pairs], masks[pairs:]
    undropped = (first == 1).all(1)
    assert torch.equal(undropped, (second == 1).all(1))
    assert int(undropped.sum()) == pairs // 2  # half of the pairs are left as they are
    dropped = ~undropped
    assert set(first[dropped].unique().tolist()) == {0.0, 2.0}  # kept channels scaled by 2
    assert torch.equal(first[dropped] + second[dropped], torch.full_like(first[dropped], 2.0))  # complementary
    assert 0.4 < float((first[dropped] == 2).float().mean()) < 0.6  # Bernoulli(0.5) per channel
    assert complementary_dropout_masks(3, 4, undropped_fraction=0.0).ne(1).all()


def test_cross_entropy_ignores_255():
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(cross_entropy(logits, target), expected)
    assert float(cross_entropy(logits, torch.full_like(target, 255))) == 0.0


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    logits = torch.zeros(1, 2, 1, 6)
    logits[0, 0, 0] = torch.tensor([4.0, 3.0, 0.0, -1.0, -3.0, 5.0])  # p(class 0) high -> easy pixels
    target = torch.zeros(1, 1, 6, dtype=torch.long)
    target[0, 0, 5] = 255
    p_true = logits.softmax(1)[0, 0, 0, :5]
    keep = ohem_keep(logits, target, thresh=0.7, min_kept=2)
    assert keep[0, 0].tolist() == (p_true <= 0.7).tolist() + [False]
    keep = ohem_keep(logits, target, thresh=0.1, min_kept=3)  # too few below 0.1: the 3 hardest
    assert int(keep.sum()) == 3 and keep[0, 0, 2:5].all()
    assert ohem_keep(logits, target, thresh=0.1, min_kept=10).sum() == 5  # fewer labelled than min_kept: all
    loss = OhemCrossEntropy(thresh=0.7, min_kept=2)(logits, target)
    mask = (p_true <= 0.7)
    expected = -(p_true[mask].log()).mean()
    torch.testing.assert_close(loss, expected)
    assert isinstance(build_loss("ohem", thresh=0.7, min_kept=1), OhemCrossEntropy)
    with pytest.raises(ValueError):
        build_loss("dice")


def test_confident_pixel_loss_normalises_by_unpadded_pixels():
    logits = torch.randn(2, 3, 4, 4)
    labels, conf = pseudo_labels(torch.randn(2, 3, 4, 4) * 5)
    ignore = torch.zeros(2, 4, 4, dtype=torch.long)
    ignore[:, :, 3] = 255
    loss = confident_pixel_loss(logits, labels, conf, ignore, threshold=0.95)
    ce = F.cross_entropy(logits, labels, reduction="none")
    keep = (conf >= 0.95) & (ignore != 255)
    torch.testing.assert_close(loss, (ce * keep).sum() / 24)
    none = confident_pixel_loss(logits, labels, torch.zeros_like(conf), ignore)
    assert float(none) == 0.0


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unimatch")
    return write_tiny_config(folder / "tiny.yaml", folder / "world", iters_per_epoch=8, lr=0.002,
                             lr_head_multiplier=2.0, save_every=1000)


@pytest.mark.parametrize("method, extra", [
    ("supervised", []), ("fixmatch", []), ("unimatch_v2", ["complementary_dropout=false"]), ("unimatch_v2", []),
])
def test_every_method_trains_and_lowers_the_loss(tiny_config, tmp_path, method, extra):
    result = run(tiny_config, [f"method={method}", f"out_dir={tmp_path}"] + extra)
    log = result["train_log"]
    assert result["iterations"] == 16 and len(log) == 16
    first, last = sum(r["loss_x"] for r in log[:4]) / 4, sum(r["loss_x"] for r in log[-4:]) / 4
    assert last < first - 0.1, [round(r["loss_x"], 3) for r in log]
    assert all(math.isfinite(r["loss"]) for r in log)
    if method != "supervised":
        assert all(math.isfinite(r["loss_u"]) and 0 <= r["confident"] <= 1 for r in log)
    assert len(result["history"]) == 2 and 0 <= result["best_ema_miou"] <= 1
    for name in ("config.yaml", "run.json", "metrics.csv", "metrics.jsonl", "train_log.csv", "results.json",
                 "best_ema.safetensors", "final_ema.safetensors", "checkpoints/last.pt", "splits/labeled.txt"):
        assert (tmp_path / name).exists(), name
    assert len((tmp_path / "splits" / "labeled.txt").read_text().splitlines()) == 8


@pytest.mark.parametrize("method, dropout, views", [
    ("fixmatch", True, 1), ("unimatch_v2", False, 2), ("unimatch_v2", True, 2),
])
def test_train_step_feeds_labelled_and_strong_views_in_one_pass(method, dropout, views):
    cfg = UniMatchV2Config(method=method, complementary_dropout=dropout, conf_thresh=0.0, weights="random",
                           arch_overrides=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               patch_size=8, image_size=32), layers=[0, 0, 1, 1])
    torch.manual_seed(0)
    model, _ = build_model(cfg, 5, torch.device("cpu"))
    teacher = ModelEMA(model).module
    seen = {}
    forward = model.forward

    def spy(images, channel_scale=None):
        seen["images"], seen["scale"] = images, channel_scale
        return forward(images, channel_scale)

    model.forward = spy
    b = 4
    batch_l = {"image": torch.rand(b, 3, 32, 32), "mask": torch.randint(0, 5, (b, 32, 32))}
    batch_u = {"image": torch.rand(b, 3, 32, 32), "ignore": torch.zeros(b, 32, 32, dtype=torch.long)}
    loss, parts = train_step(model, teacher, batch_l, batch_u, cfg=cfg, criterion=build_loss("ce"),
                             strong=StrongAugment(), amp_dtype=None, device=torch.device("cpu"))
    assert seen["images"].shape[0] == b * (1 + views)  # labelled + strong views, one forward
    assert torch.equal(seen["images"][:b], batch_l["image"])
    if method == "unimatch_v2" and dropout:
        scale = seen["scale"]
        assert scale.shape == (3 * b, 32) and (scale[:b] == 1).all()  # labelled images are never dropped
        torch.testing.assert_close(scale[b:2 * b] + scale[2 * b:], torch.full((b, 32), 2.0))
    else:
        assert seen["scale"] is None
    # the values of loss_x, loss_u and confident are pinned by the next test
    loss.backward()
    assert model.head.output[-1].weight.grad.abs().sum() > 0



@pytest.mark.parametrize("method, views", [("fixmatch", 1), ("unimatch_v2", 2)])
def test_unlabelled_loss_is_the_authors_confident_pixel_loss_averaged_over_the_strong_views(method, views):
    """Recomputed by hand from the student's and the teacher's outputs, as the authors' step writes it:
    CE against the teacher's argmax, kept where its softmax max >= threshold and not ignored, summed and
    divided by the non-ignored pixels, then averaged over the strong views (which Complementary Dropout
    makes differ)."""
    cfg = UniMatchV2Config(method=method, complementary_dropout=True, cutmix_p=0.0,
                           weights="random", layers=[0, 0, 1, 1],
                           arch_overrides=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               patch_size=8, image_size=32))
    torch.manual_seed(0)
    model, _ = build_model(cfg, 5, torch.device("cpu"))
    teacher = ModelEMA(model).module
    with torch.no_grad():  # a teacher that differs from the student
        for p in teacher.head.parameters():
            p.mul_(3.0)
    outputs = []
    forward = model.forward

    def spy(images, channel_scale=None):
        out = forward(images, channel_scale)
        outputs.append(out)
        return out

    model.forward = spy
    b = 3
    g = torch.Generator().manual_seed(1)
    batch_l = {"image": torch.rand(b, 3, 32, 32, generator=g), "mask": torch.randint(0, 5, (b, 32, 32), generator=g)}
    ignore = torch.zeros(b, 32, 32, dtype=torch.long)
    ignore[:, :, 24:] = 255  # padding on the right of every unlabelled image
    batch_u = {"image": torch.rand(b, 3, 32, 32, generator=g), "ignore": ignore}
    with torch.no_grad():
        probs = teacher(batch_u["image"]).softmax(1)
    conf, labels = probs.max(1)
    threshold = float(conf[ignore != 255].median())  # keeps about half of the pixels
    cfg = dataclasses.replace(cfg, conf_thresh=threshold)
    loss, parts = train_step(model, teacher, batch_l, batch_u, cfg=cfg, criterion=build_loss("ce"),
                             strong=lambda x: x, amp_dtype=None, device=torch.device("cpu"))
    keep = (conf >= threshold) & (ignore != 255)
    assert 0 < int(keep.sum()) < int((ignore != 255).sum())  # the threshold keeps some pixels, not all
    (out,) = outputs
    per_view = []
    for v in range(views):
        pred = out[b * (1 + v): b * (2 + v)].detach()
        ce = torch.nn.functional.cross_entropy(pred, labels, reduction="none")
        per_view.append(float((ce * keep).sum() / (ignore != 255).sum()))
    if views == 2:
        assert abs(per_view[0] - per_view[1]) > 1e-4  # the dropped channels make the two views differ
    assert float(parts["loss_u"]) == pytest.approx(sum(per_view) / views, rel=1e-5)
    ce_x = torch.nn.functional.cross_entropy(out[:b].detach(), batch_l["mask"])
    assert float(parts["loss_x"]) == pytest.approx(float(ce_x), rel=1e-5)
    assert float(parts["confident"]) == pytest.approx(float(keep.sum()) / keep.numel(), rel=1e-6)
    assert float(loss.detach()) == pytest.approx((float(ce_x) + sum(per_view) / views) / 2, rel=1e-5)

def test_resume_of_a_missing_checkpoint_path_fails(tiny_config, tmp_path):
    from leafseg.errors import RunFolderError

    with pytest.raises(RunFolderError, match="nope.pt"):
        run(tiny_config, [f"out_dir={tmp_path}"], resume=str(tmp_path / "nope.pt"))


def test_demo_settings_follow_the_synthetic_config():
    from leafseg.recipes.unimatch_v2 import DEMO_SETTINGS, UniMatchV2Config
    from leafseg.training import load_config

    config = Path(__file__).resolve().parents[1] / "configs" / "unimatch_v2" / "synthetic.yaml"
    published = load_config(UniMatchV2Config, config)
    demo = load_config(UniMatchV2Config, config, DEMO_SETTINGS)
    differ = {k for k, v in vars(demo).items() if getattr(published, k) != v}
    assert differ <= {"synthetic", "save_every"}, f"demo settings drifted from synthetic.yaml: {sorted(differ)}"
    assert demo.synthetic.train == published.synthetic.train


def test_blur_sigma_is_checked():
    from leafseg.recipes.unimatch_v2 import UniMatchV2Config, check_config

    with pytest.raises(ValueError, match="blur_sigma"):
        check_config(UniMatchV2Config(labeled_fraction=0.5, blur_sigma=[2.0, 0.5]))
