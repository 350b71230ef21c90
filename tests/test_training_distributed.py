import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from leafseg.training import ResumableSampler, shard_indices
from unimatch_tiny import write_tiny_config

WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from leafseg.recipes.unimatch_v2 import run
result = run(sys.argv[1], sys.argv[3:])
json.dump({k: v for k, v in result.items() if k != "train_log"}, open(sys.argv[2], "w"))
"""


def test_sampler_repeats_shuffles_and_deals_to_ranks():
    ranks = [ResumableSampler(5, 12, num_replicas=2, rank=r, seed=3) for r in range(2)]
    keys = [list(s) for s in ranks]
    draws = sorted(d for k in keys for _, _, d in k)
    assert draws == list(range(12))  # every draw of the epoch once, split over the ranks
    assert all(i == d % 5 for k in keys for i, _, d in k)  # a list shorter than the epoch repeats
    assert len(ranks[0]) == 6
    ranks[0].set_epoch(1)
    assert [k[2] for k in ranks[0]] != [k[2] for k in keys[0]]  # reshuffled each epoch
    assert all(e == 1 for _, e, _ in ranks[0])


def test_sampler_resumes_mid_epoch():
    s = ResumableSampler(10, num_replicas=1, rank=0, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_start(3)
    assert list(s) == full[3:] and len(s) == 7
    s.set_epoch(5)
    assert len(list(s)) == 10  # set_epoch clears the start


def test_evaluation_shards_cover_every_image_once():
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    config = write_tiny_config(tmp_path / "tiny.yaml", tmp_path / "world", eval_batch_size=2, device="cpu")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(worker), str(config), str(tmp_path / f"rank{r}.json"),
                               f"out_dir={tmp_path / 'run'}"], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["weights_sha256"] == r1["weights_sha256"]  # DDP kept the replicas identical
    assert r0["iterations"] == 8  # 32 unlabelled / (4 per batch x 2 ranks) x 2 epochs
    assert json.dumps(r0["history"]) == json.dumps(r1["history"])
    assert r0["final_pixels"] == 8 * 32 * 32  # every validation pixel counted exactly once

    # the reduced evaluation equals a single-process evaluation of the saved student
    from leafseg.data.datasets import build_dataset
    from leafseg.recipes.unimatch_v2 import UniMatchV2Config, build_model, evaluate, load_config
    from leafseg.training import DistInfo

    cfg = load_config(UniMatchV2Config, config, [f"out_dir={tmp_path / 'run'}"])
    val = build_dataset("synthetic", tmp_path / "world", split="val")
    model, _ = build_model(cfg, val.num_classes, torch.device("cpu"))
    model.load_state_dict(load_file(tmp_path / "run" / "final_student.safetensors"))
    single = evaluate(model, val, cfg, DistInfo(), val.num_classes, val.ignore_index, None)
    assert single["pixels"] == r0["final_pixels"]
    assert single["miou"] == pytest.approx(r0["final_student_miou"], abs=1e-12)


def test_distributed_session_keeps_a_group_it_did_not_start(tmp_path):
    import torch.distributed as dist

    from leafseg.training import distributed_session

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with distributed_session("cpu") as info:
            assert info.device.type == "cpu" and dist.is_initialized()
        assert dist.is_initialized()  # the caller's group outlives the session
    finally:
        dist.destroy_process_group()
    with pytest.raises(RuntimeError, match="boom"), distributed_session("cpu"):
        raise RuntimeError("boom")
    assert not dist.is_initialized()
