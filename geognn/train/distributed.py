"""Data-parallel training with ``torchrun`` (torch.distributed: gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node P -m geognn.cli train ...`` starts P processes; each reads its
rank from the environment (RANK, WORLD_SIZE, LOCAL_RANK), trains on its shard of every
batch list, and gradients are averaged by ``DistributedDataParallel``. Without those variables
this is a single process and every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("config device='cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def setup(device: str) -> Dist:
    """Join the process group if started by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def cleanup(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Elementwise sum over ranks (a copy; the input is returned unchanged in one process)."""
    if d.world == 1:
        return values
    out = values.detach().to(d.device, torch.float64).clone()
    dist.all_reduce(out)
    return out.cpu()


def any_rank(flag: bool, d: Dist) -> bool:
    """True if ``flag`` is true on any rank (keeps ranks in step when one decides to stop)."""
    if d.world == 1:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)]), d)[0] > 0)
