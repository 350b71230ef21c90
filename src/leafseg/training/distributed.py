"""Distributed training with torchrun / DDP, and samplers that resume mid-epoch.

``init_distributed()`` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and joins the process group through ``env://`` -- NCCL on GPUs,
gloo on CPUs. Without those variables it is a single process and nothing is initialised.

    torchrun --nproc_per_node 4 -m leafseg.cli train unimatch_v2 CONFIG       # one node
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 4 ...  # two nodes
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    """This process's place: rank, world size, local rank, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the torchrun process group (if launched by torchrun) and pick this rank's device.

    device: "auto" (CUDA if available, else CPU), "cpu", "cuda". backend: default NCCL for
    CUDA, gloo for CPU. A second call returns the same information without re-initialising.
    """
    want = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
        dev = torch.device("cuda", local if world > 1 else torch.device(want).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(want)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"), init_method="env://",
                                rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


@contextmanager
def distributed_session(device: str = "auto", backend: str | None = None) -> Iterator[DistInfo]:
    """``init_distributed`` for the length of a ``with`` block. The process group is left at the end
    only if this block joined it: a caller that already holds a group (a test, a notebook) keeps it."""
    joined = dist.is_available() and dist.is_initialized()
    info = init_distributed(device, backend)
    try:
        yield info
    finally:
        if not joined:
            cleanup_distributed()


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    """Whether this process is in a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if is_initialized() else 1


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ranks (a copy; the input itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` over an epoch of ``epoch_length`` draws that can start mid-epoch.

    Each epoch the draws ``0 .. epoch_length - 1`` stand for sample ``draw % num_items`` (a
    list shorter than the epoch is repeated, as UniMatch repeats the labelled list to match
    the unlabelled one), are shuffled with ``seed + epoch`` and dealt to ranks like
    ``DistributedSampler`` (``drop_last=True``). It yields ``(sample index, epoch, draw)``
    keys, so a dataset can seed its random augmentation per draw, independently of workers.
    ``set_epoch(e)`` and ``set_start(k)`` (skip this rank's first k keys) place the stream
    exactly where a checkpoint left it.
    """

    def __init__(self, num_items: int, epoch_length: int | None = None, *, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0):
        if num_items < 1:
            raise ValueError("the sampler needs at least one item")
        self.num_items = int(num_items)
        self.epoch_length = int(epoch_length or num_items)
        super().__init__(range(self.epoch_length), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip this rank's first ``start`` keys of the current epoch (once; reset by ``set_epoch``)."""
        self.start = int(start)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def draws(self) -> list[int]:
        """This rank's draws of the current epoch, in order (before skipping ``start``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.epoch_length, generator=g).tolist()
        else:
            order = list(range(self.epoch_length))
        order = order[: self.total_size]
        return order[self.rank: self.total_size: self.num_replicas]

    def __iter__(self):
        for draw in self.draws()[self.start:]:
            yield draw % self.num_items, self.epoch, draw

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``n`` items: every item on exactly one rank (for
    evaluation, where ``DistributedSampler``'s padding would count some images twice)."""
    return list(range(rank, n, world_size))
