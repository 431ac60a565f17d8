"""Process group and device, for every command that runs on several processes (cache build,
both training stages, the probe's feature build): DDP under torchrun, a single process otherwise.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT); we initialize from those
(gloo on CPU, nccl on CUDA). Without them the run is one process and every collective below is
a no-op, so callers use them unconditionally. A process group that already exists (a recipe
running several stages under one torchrun) is joined, not re-created, and left to its owner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from salt_cache.errors import SaltCacheError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    threads_before: int = 0  # torch's CPU thread count before `setup` changed it (restored on teardown)
    owns_group: bool = False  # `setup` created the process group (teardown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> a device; "cuda" means cuda:LOCAL_RANK (cuda:0 in a
    single process). Anything else is refused in one line."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise SaltCacheError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SaltCacheError(f"device: {name!r} requested but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise SaltCacheError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


def cpu_threads(workers: int, local_world: int = 1) -> int:
    """Intra-op threads for a CPU run: the cores left after the DataLoader workers, shared by the
    processes of this node. Oversubscribed torch threads spin and can make steps 10x slower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world) - workers)


def setup(device: str = "auto", workers: int = 0, timeout: timedelta | None = None) -> DistEnv:
    """Join the torchrun process group if there is one; pick this process's device (and, on CPU,
    its thread count given `workers` DataLoader workers: an oversubscribed OpenMP pool can make
    a forward 50x slower). `timeout`: of the collectives, when this call creates the group (a
    cache build's ranks can finish their stores hours apart). Pair with `teardown`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device, local_rank)
    threads_before = torch.get_num_threads()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    else:
        torch.set_num_threads(cpu_threads(workers, local_world))
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs)
        owns = True
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, threads_before=threads_before,
                   owns_group=owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    if env.threads_before:
        torch.set_num_threads(env.threads_before)


def wrap(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP-wrap `model` when there is more than one process; the model itself otherwise."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy); unchanged in a single process."""
    if not env.distributed:
        return values
    out = values.detach().to(env.device, torch.float64 if env.device.type == "cpu" else torch.float32).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def all_gather_objects(obj, env: DistEnv) -> list:
    """[obj of rank 0, obj of rank 1, ...]: small picklable records (RNG, data positions)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj, env: DistEnv) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None on the others (one copy of every
    rank's record, e.g. validation features, instead of world_size copies)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj, env: DistEnv):
    """Rank 0's `obj` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index or 0])
        else:
            dist.barrier()
