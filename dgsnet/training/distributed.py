"""`torchrun` data parallelism: joining the process group, barriers, an any-rank vote."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DistInfo", "any_rank", "barrier", "broadcast_parameters", "setup_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a run: its rank, the world size and its local rank (on its
    node)."""

    rank: int = 0
    """This process's rank (0 without torchrun)."""
    world_size: int = 1
    """The number of processes (1 without torchrun)."""
    local_rank: int = 0
    """The rank within the node (`LOCAL_RANK`), the CUDA device index."""

    @property
    def distributed(self) -> bool:
        """Whether more than one process runs."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs, shows progress and writes checkpoints."""
        return self.rank == 0


def setup_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group when launched by `torchrun` (`WORLD_SIZE > 1` in the
    environment): backend NCCL on CUDA, gloo otherwise. Idempotent; a single process (no
    `WORLD_SIZE`) never touches `torch.distributed`."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dev = torch.device(device) if device is not None else None
        backend = "nccl" if (dev is not None and dev.type == "cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when `flag` is true on any rank (an all-reduce; the flag itself otherwise)."""
    if not info.distributed:
        return flag
    import torch.distributed as dist

    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_parameters(module: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's values of `module`'s parameters (no-op in one process)."""
    if not info.distributed:
        return
    import torch.distributed as dist

    for param in module.parameters():
        dist.broadcast(param.data, src=0)
