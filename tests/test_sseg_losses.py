"""Hungarian mask matching, the S-Seg mask loss, and the image-text contrastive loss.

Matching is checked against an exhaustive search over assignments; the mask loss against its
closed form on perfect predictions; the contrastive loss against its definition, its symmetry,
and (two gloo processes) the gradient of one big batch.
"""

from __future__ import annotations

import itertools
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from leafseg.losses.contrastive import ContrastiveLoss, all_gather_with_grad, contrastive_loss
from leafseg.losses.matching import (
    MaskMatchingLoss,
    dice_cost,
    dice_loss,
    focal_cost,
    focal_loss,
    hungarian_masks,
    region_targets,
)


def _brute_force(cost: torch.Tensor, valid: torch.Tensor) -> float:
    """Least total cost of giving every valid target a distinct prediction (or every prediction a
    distinct target when there are fewer predictions): cost (N, K), valid (K,)."""
    cols = valid.nonzero().flatten().tolist()
    n = cost.shape[0]
    if len(cols) <= n:
        return min(sum(float(cost[p, c]) for p, c in zip(perm, cols, strict=True))
                   for perm in itertools.permutations(range(n), len(cols)))
    return min(sum(float(cost[p, c]) for p, c in zip(range(n), chosen, strict=True))
               for chosen in itertools.permutations(cols, n))


@pytest.mark.parametrize("n,k", [(5, 3), (4, 4), (2, 4)])
def test_matching_equals_brute_force(n, k):
    g = torch.Generator().manual_seed(n * 10 + k)
    b, p = 4, 36
    logits = torch.randn(b, n, p, generator=g) * 3
    targets = (torch.rand(b, k, p, generator=g) < 0.4).float()
    valid = torch.rand(b, k, generator=g) < 0.8
    valid[0] = True
    cost = dice_cost(logits, targets) + 20 * focal_cost(logits, targets)
    m = hungarian_masks(logits, targets, valid)
    for i in range(b):
        sel = m.batch == i
        pred, tgt = m.pred[sel], m.target[sel]
        assert len(set(pred.tolist())) == len(pred) and len(set(tgt.tolist())) == len(tgt)
        assert bool(valid[i, tgt].all())
        assert len(pred) == min(n, int(valid[i].sum()))
        got = float(cost[i, pred, tgt].sum())
        assert got == pytest.approx(_brute_force(cost[i], valid[i]), abs=1e-5)


def test_pairwise_costs_equal_pair_losses():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(2, 3, 50, generator=g), (torch.rand(2, 4, 50, generator=g) < 0.5).float()
    dc, fc = dice_cost(logits, targets), focal_cost(logits, targets)
    for b, i, j in itertools.product(range(2), range(3), range(4)):
        pred, tgt = logits[b, i : i + 1], targets[b, j : j + 1]
        assert float(dc[b, i, j]) == pytest.approx(float(dice_loss(pred, tgt)), abs=1e-6)
        assert float(fc[b, i, j]) == pytest.approx(float(focal_loss(pred, tgt)), abs=1e-6)


def test_region_targets_flags_empty_and_ignored_regions():
    regions = torch.tensor([[[0, 0, 2, 2], [0, 0, 2, 255]]])
    targets, valid = region_targets(regions, num_regions=4)
    assert targets.shape == (1, 4, 8)
    assert valid.tolist() == [[True, False, True, False]]
    assert targets[0, :, 7].sum() == 0  # the ignored pixel belongs to no region
    assert torch.equal(targets.sum(1)[0, :7], torch.ones(7))


def _perfect_case(margin: float):
    """Regions of 2 images (K = 3, one region empty in image 1), N = 6 predictions: queries 4, 0, 2
    predict regions 0, 1, 2 with logits +-margin, the other queries predict garbage."""
    g = torch.Generator().manual_seed(0)
    regions = torch.randint(0, 3, (2, 8, 8), generator=g)
    regions[1][regions[1] == 1] = 0
    onehot = F.one_hot(regions, 3).permute(0, 3, 1, 2).float()  # (2, 3, 8, 8)
    logits = torch.randn(2, 6, 8, 8, generator=g) * 0.1  # garbage: near p = 0.5, costly
    for query, region in ((4, 0), (0, 1), (2, 2)):
        logits[:, query] = margin * (2 * onehot[:, region] - 1)
    return logits, regions


def test_mask_loss_vanishes_for_perfect_predictions():
    crit = MaskMatchingLoss(num_regions=3)
    logits, regions = _perfect_case(30.0)
    out = crit(logits, regions)
    # matched exactly the perfect queries (region 1 of image 1 is empty, so it has no pair)
    m = out["matching"]
    pairs = sorted(zip(m.batch.tolist(), m.pred.tolist(), m.target.tolist(), strict=True))
    assert pairs == [(0, 0, 1), (0, 2, 2), (0, 4, 0), (1, 2, 2), (1, 4, 0)]
    assert float(out["dice"]) < 1e-10
    assert 0 <= float(out["focal"]) < 1e-20  # exp(-3 * 30), below float32's range: exactly 0 here
    assert float(out["loss"]) < 1e-10
    # at a moderate margin the focal term is its closed form: every pixel has p_t = sigmoid(m), so
    # the mean over pixels is (alpha * fg share + (1 - alpha) * bg share) * sigmoid(-m)^2 * softplus(-m),
    # summed over the 5 matched masks and divided by 5
    out = crit(*_perfect_case(8.0))
    onehot = F.one_hot(regions, 3).float().flatten(1, 2)  # (2, 64, 3)
    fg = torch.tensor([float(onehot[b, :, k].mean()) for b, _, k in pairs])
    m = torch.tensor(-8.0, dtype=torch.float64)
    expected = float((0.25 * fg + 0.75 * (1 - fg)).mean() * torch.sigmoid(m) ** 2 * F.softplus(m))
    assert float(out["focal"]) == pytest.approx(expected, rel=1e-2)
    # and the loss falls monotonically towards zero as predictions become more confident
    losses = [float(crit(*_perfect_case(m))["loss"]) for m in (1.0, 3.0, 6.0, 12.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 1e-4


def test_focal_loss_closed_form():
    m, alpha = 4.0, 0.25
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])
    x = m * (2 * t - 1)
    expected = (2 * alpha + 3 * (1 - alpha)) / 5 * torch.sigmoid(torch.tensor(-m)) ** 2 * F.softplus(torch.tensor(-m))
    assert float(focal_loss(x, t, alpha=alpha)) == pytest.approx(float(expected), rel=1e-5)


def test_unmatched_predictions_are_not_penalised():
    crit = MaskMatchingLoss(num_regions=3)
    logits, regions = _perfect_case(5.0)
    base = float(crit(logits, regions)["loss"])
    changed = logits.clone()
    changed[:, [1, 3, 5]] = torch.randn(2, 3, 8, 8) * 0.3  # unmatched queries: anything poor
    assert float(crit(changed, regions)["loss"]) == pytest.approx(base, rel=1e-6)
    leaf = changed.clone().requires_grad_(True)
    crit(leaf, regions)["loss"].backward()
    assert leaf.grad[:, [1, 3, 5]].abs().max() == 0
    assert leaf.grad[:, [0, 2, 4]].abs().max() > 0


def test_mask_loss_weights_and_aux_layers():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 8, 8, generator=g)
    regions = torch.randint(0, 3, (2, 16, 16), generator=g)  # resized to the 8x8 predictions
    out = MaskMatchingLoss(3)(logits, regions)
    assert float(out["loss"]) == pytest.approx(float(out["dice"] + 20 * out["focal"]), rel=1e-6)
    with_aux = MaskMatchingLoss(3)(logits, regions, aux=[logits, logits])
    assert float(with_aux["loss"]) == pytest.approx(3 * float(out["loss"]), rel=1e-6)


def test_contrastive_definition_and_symmetry():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    scale = 10.0
    x, y = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    sim = scale * x @ y.t()
    expected = -(sim.diag() - sim.logsumexp(1)).mean() - (sim.diag() - sim.logsumexp(0)).mean()
    loss = contrastive_loss(img, txt, scale)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(contrastive_loss(txt, img, scale)) == pytest.approx(float(loss), rel=1e-6)
    # the two directions differ on their own; only their sum is symmetric
    i2t = F.cross_entropy(sim, torch.arange(6))
    assert abs(float(i2t) - float(loss) / 2) > 1e-4
    # aligned pairs with a large scale: near zero
    assert float(contrastive_loss(x, x + 1e-3 * torch.randn(6, 16, generator=g), 100.0)) < 1e-3


def test_learnable_temperature_gets_gradient_and_clamps():
    loss_fn = ContrastiveLoss(init_temperature=0.07)
    assert float(loss_fn.scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    loss_fn(img, txt).backward()
    assert loss_fn.logit_scale.grad is not None and float(loss_fn.logit_scale.grad.abs()) > 0
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1000.0))
    assert float(loss_fn.scale.detach()) == pytest.approx(100.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, img: torch.Tensor, txt: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x = img[4 * rank : 4 * rank + 4].clone().requires_grad_(True)
        y = txt[4 * rank : 4 * rank + 4].clone().requires_grad_(True)
        contrastive_loss(x, y, 5.0).backward()
        # uneven shards: 2 rows on rank 0, 3 on rank 1; the backward sums every rank's gradient
        part = torch.ones(2 + rank, 3, requires_grad=True)
        gathered, offset = all_gather_with_grad(part)
        weights = torch.arange(15.0).view(5, 3)
        (gathered * weights).sum().backward()
        # DDP averages gradients over ranks: emulate it
        out[rank] = {"gx": x.grad / 2, "gy": y.grad / 2, "offset": offset, "rows": gathered.shape[0],
                     "gpart": part.grad, "expected_gpart": 2 * weights[offset : offset + 2 + rank]}
    finally:
        dist.destroy_process_group()


def test_distributed_negatives_match_one_big_batch():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), img, txt, out), nprocs=2, join=True)
        result = dict(out)
    x, y = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    contrastive_loss(x, y, 5.0, gather=False).backward()
    assert result[0]["offset"] == 0 and result[1]["offset"] == 2 and result[1]["rows"] == 5
    for r in (0, 1):
        assert torch.equal(result[r]["gpart"], result[r]["expected_gpart"])
    assert torch.allclose(torch.cat([result[0]["gx"], result[1]["gx"]]), x.grad, atol=1e-6)
    assert torch.allclose(torch.cat([result[0]["gy"], result[1]["gy"]]), y.grad, atol=1e-6)


def test_multi_label_loss_reduces_to_clip_with_one_distinct_noun_per_image():
    from leafseg.losses.contrastive import multi_label_loss

    torch.manual_seed(0)
    image, nouns = torch.randn(5, 8), torch.randn(5, 8)
    targets = torch.eye(5, dtype=torch.bool)
    assert torch.allclose(multi_label_loss(image, nouns, targets, 10.0),
                          contrastive_loss(image, nouns, 10.0, gather=False), atol=1e-5)


def test_multi_label_loss_shared_nouns_and_edge_cases():
    from leafseg.losses.contrastive import multi_label_loss

    torch.manual_seed(0)
    nouns = F.normalize(torch.randn(3, 16), dim=-1)
    targets = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)  # image 3: no noun
    image = torch.stack([nouns[0] + nouns[1], nouns[1], nouns[2], torch.randn(16)])
    aligned = multi_label_loss(image, nouns, targets, 20.0)
    shuffled = multi_label_loss(image[[2, 0, 1, 3]], nouns, targets, 20.0)
    assert aligned < shuffled
    # by hand: image to text, soft targets over each image's nouns; text to image, over each noun's images
    logits = 20.0 * F.normalize(image, dim=-1) @ nouns.t()
    t = targets.float()
    i2t = -(t[:3] / t[:3].sum(1, keepdim=True) * logits[:3].log_softmax(1)).sum(1).mean()
    t2i = -(t / t.sum(0) * logits.log_softmax(0)).sum(0).mean()
    assert torch.allclose(aligned, i2t + t2i, atol=1e-5)
    image.requires_grad_(True)
    multi_label_loss(image, nouns, targets, 20.0).backward()
    assert image.grad[:3].abs().sum() > 0
    empty = multi_label_loss(image, nouns[:0], targets[:, :0], 20.0)
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="targets"):
        multi_label_loss(image, nouns, targets[:, :2], 20.0)
