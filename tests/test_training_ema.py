import pytest
import torch
from torch import nn

from leafseg.training import ModelEMA, ema_momentum


def test_momentum_ramps_up_to_its_cap():
    assert ema_momentum(0) == 0.0
    assert ema_momentum(1) == pytest.approx(0.5)
    assert ema_momentum(9) == pytest.approx(0.9)
    assert ema_momentum(249) == pytest.approx(0.996)
    assert ema_momentum(10_000) == 0.996
    assert ema_momentum(5, max_momentum=0.5) == 0.5
    values = [ema_momentum(t) for t in range(400)]
    assert values == sorted(values)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("const", torch.ones(2), persistent=False)


def test_teacher_is_averaged_parameter_by_parameter():
    student = Net()
    ema = ModelEMA(student)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        student.lin.weight.add_(1.0)
        student.running.fill_(4.0)
        student.count.fill_(7)
        student.const.fill_(3.0)
    assert ema.update(student, 0) == 0.0  # momentum 0: the teacher becomes the student
    torch.testing.assert_close(ema.module.lin.weight, student.lin.weight)
    before = ema.module.lin.weight.clone()
    with torch.no_grad():
        student.lin.weight.add_(2.0)
        student.running.fill_(8.0)
    m = ema.update(student, 3)
    assert m == pytest.approx(0.75)
    torch.testing.assert_close(ema.module.lin.weight, 0.75 * before + 0.25 * student.lin.weight)
    torch.testing.assert_close(ema.module.running, torch.full((2,), 0.75 * 4 + 0.25 * 8))
    assert int(ema.module.count) == 7  # integer buffers are copied
    assert torch.equal(ema.module.const, student.const)  # non-persistent buffers are copied


def test_state_dict_round_trip():
    a, b = ModelEMA(Net()), ModelEMA(Net())
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
