import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from leafseg.recipes.unimatch_v2 import run
from leafseg.training import checkpoint as checkpoint_module
from leafseg.training import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from unimatch_tiny import write_tiny_config

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


def test_killed_run_resumes_bit_identically(tmp_path):
    config = write_tiny_config(tmp_path / "tiny.yaml", tmp_path / "world")
    full = run(config, ["out_dir=" + str(tmp_path / "full"), "save_every=3"])
    assert full["iterations"] == 16  # 32 unlabelled / 4 per batch x 2 epochs
    killed = run(config, ["out_dir=" + str(tmp_path / "cut"), "save_every=3", "stop_after=11"])
    assert killed["stopped_at"] == 11  # killed at 11: the last checkpoint is at 9
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["loop"]["iteration"] == 9
    resumed = run(config, ["out_dir=" + str(tmp_path / "cut"), "save_every=3"], resume=True)
    for name in ("final_student", "final_ema"):
        a = load_file(tmp_path / "full" / f"{name}.safetensors")
        b = load_file(tmp_path / "cut" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.dumps(resumed["history"]) == json.dumps(full["history"])  # NaN-safe comparison
    drop = {"seconds_per_iter"}
    assert ([{k: v for k, v in r.items() if k not in drop} for r in resumed["train_log"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in full["train_log"]])
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert {"model", "ema", "optimizer", "scheduler", "rng", "loop", "config"} <= set(ckpt)
    assert ckpt["loop"]["iteration"] == 16 and ckpt["loop"]["epoch"] == 2
