import io
import math

import pytest
import torch

from leafseg.training import poly_lr, poly_schedule, warmup_cosine_schedule


def test_poly_formula():
    assert poly_lr(1.0, 0, 100) == 1.0
    assert poly_lr(2e-4, 50, 100, 0.9) == pytest.approx(2e-4 * 0.5 ** 0.9)
    assert poly_lr(1.0, 100, 100) == 0.0
    assert poly_lr(1.0, 150, 100) == 0.0


def optimizer():
    enc, head = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [enc], "lr": 5e-6}, {"params": [head], "lr": 2e-4}], lr=5e-6)


def test_groups_decay_together_and_keep_their_ratio():
    opt = optimizer()
    sched = poly_schedule(opt, total_iters=10)
    seen = []
    for t in range(10):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] == poly_lr(5e-6, t, 10)  # the closed form, bit for bit
        assert lrs[1] / lrs[0] == pytest.approx(40.0)
        seen.append(lrs[0])
        opt.step()
        sched.step()
    assert seen == sorted(seen, reverse=True)


def test_state_round_trips_through_a_weights_only_load():
    opt = optimizer()
    sched = poly_schedule(opt, total_iters=20, power=0.9)
    for _ in range(7):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    opt2 = optimizer()
    sched2 = poly_schedule(opt2, total_iters=20, power=0.9)
    sched2.load_state_dict(torch.load(buf, weights_only=True))
    assert sched2.last_epoch == 7
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_needs_iterations():
    with pytest.raises(ValueError):
        poly_schedule(optimizer(), total_iters=0)


def test_warmup_then_cosine_keeps_group_ratios():
    opt = optimizer()
    sched = warmup_cosine_schedule(opt, total_iters=20, warmup=4, min_ratio=0.01)
    seen = []
    for _ in range(20):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [s[0] for s in seen[:4]] == pytest.approx([5e-6 * (t + 1) / 4 for t in range(4)])
    assert seen[4][0] == pytest.approx(5e-6) and seen[-1][0] == pytest.approx(
        5e-6 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 15 / 16))))
    assert all(s[1] / s[0] == pytest.approx(40.0) for s in seen)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)  # partial factors save as plain data
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["last_epoch"] == 20
