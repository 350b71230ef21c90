
import pytest

from leafseg.training import ResumableSampler, shard_indices


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
