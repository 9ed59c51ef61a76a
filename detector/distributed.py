"""torchrun context for training (DDP) and audits: gloo on CPU, NCCL on CUDA; rank 0 is the one that writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "DistContext":
        """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.enabled else device

    def shard(self, data: torch.Tensor) -> torch.Tensor:
        """Equal-sized strided shards: every rank takes the same number of steps per epoch (DDP needs it)."""
        if not self.enabled:
            return data
        per_rank = data.shape[0] // self.world
        return data[self.rank :: self.world][:per_rank]

    def stride(self, data: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a set every rank holds: rank, rank + world, ... (all of them, unlike shard)."""
        return data[self.rank :: self.world] if self.enabled else data

    def gather_strided(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's ``stride`` rows of an ``n``-row set, put back in the set's order, on every rank."""
        if not self.enabled:
            return local
        import torch.distributed as dist

        longest = -(-n // self.world)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        out = local.new_empty((n, *local.shape[1:]))
        for rank, part in enumerate(parts):
            out[rank :: self.world] = part[: len(range(rank, n, self.world))]
        return out

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
