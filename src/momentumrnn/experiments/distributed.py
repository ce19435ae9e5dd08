"""Data-parallel training under ``torchrun``: the process group and what ranks agree on.

    torchrun --standalone --nproc_per_node 2 -m momentumrnn train --task adding --model momentum-lstm ...

``from_environment`` starts PyTorch's process group when ``torchrun`` set ``WORLD_SIZE``
above 1 (NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the CPU) and returns a
``Ranks``; a single process gets ``Ranks()`` (rank 0 of 1) and every method below is then
the identity, with no communication.

How training uses it (``train.py``): the global batch ``--batch-size`` is cut into equal
contiguous shards, one per rank, in the order a single process would take it; each rank's
loss is weighted by its share of the batch's loss terms, so that DDP's average of the
gradients is the gradient of the global mean; the training statistics, validation and test
sums are added across ranks (``sum``); stop decisions are taken together; rank 0
alone writes the run directory, and checkpoints hold every rank's RNG state and carried
task state (``gather``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["Ranks", "from_environment"]


@dataclass
class Ranks:
    """This process's place among the ranks of a data-parallel run."""

    rank: int = 0
    world: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this rank writes the run directory and speaks."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """``values`` added across ranks (float64)."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def shard(self, count: int) -> slice:
        """This rank's contiguous part of ``count`` items (equal parts when ``world`` divides it)."""
        size = -(-count // self.world)
        return slice(min(self.rank * size, count), min((self.rank + 1) * size, count))

    def close(self) -> None:
        """The end of a run on every rank: wait for all (rank 0 writes last), then leave the group."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def abandon(self) -> None:
        """The end of a failed rank: no more collectives (the others may be inside one; torchrun
        stops them when this process exits)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def from_environment(device_name: str) -> Ranks:
    """The ranks ``torchrun`` started, or a single process. ``device_name`` is the run's
    ``--device``: CUDA ranks take ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return Ranks(rank, world, backend, device)
