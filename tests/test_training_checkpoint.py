import random

import numpy as np
import pytest
import torch

from leafseg.training import checkpoint as checkpoint_module
from leafseg.training import load_checkpoint, rng_states, save_checkpoint, set_rng_states

pytestmark = pytest.mark.usefixtures("one_thread")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"iteration": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"iteration": 2}, path)
    assert load_checkpoint(path)["iteration"] == 1  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_states_round_trip_through_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": rng_states()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_states(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[0] == got[0] and expected[1] == got[1] and torch.equal(expected[2], got[2])


def test_exported_weights_name_their_recipe_and_config(tmp_path):
    from leafseg.training import export_weights, read_exported

    tensors = {"w": torch.arange(6.0).view(2, 3)}
    for name in ("w.safetensors", "w.pt"):
        export_weights(tmp_path / name, tensors, recipe="unimatch_v2", config={"lr": 0.1, "layers": [1, 2]},
                       extra={"classes": ["sky", "sand"]})
        got = read_exported(tmp_path / name)
        assert got["recipe"] == "unimatch_v2" and got["config"] == {"lr": 0.1, "layers": [1, 2]}
        assert got["extra"] == {"classes": ["sky", "sand"]} and torch.equal(got["model"]["w"], tensors["w"])


def test_a_run_without_an_optimizer_checkpoints_and_restores(tmp_path):
    from leafseg.training import RunState, read_training_checkpoint, restore_training, training_checkpoint

    state = RunState(iteration=3, history=[{"iteration": 3, "miou": 0.5}])
    ckpt = training_checkpoint(recipe="fuss", state=state, config={}, model={"w": torch.ones(2)},
                               extra={"clients": {"0": {"w": torch.zeros(2)}}})
    assert "optimizer" not in ckpt
    save_checkpoint(ckpt, tmp_path / "last.pt")
    back = read_training_checkpoint(tmp_path / "last.pt", "fuss")
    assert restore_training(back) == state
    assert torch.equal(back["extra"]["clients"]["0"]["w"], torch.zeros(2))
