"""Several processes, one checkpoint: how a run that torchrun started shares out its work.

`torchrun --nproc-per-node N -m zoo compress ...` starts N processes (ranks) that talk through
torch.distributed: NCCL between GPUs, gloo between CPUs. One process is the same code with a
world of one, so the two cannot drift apart. What the ranks share and how:

- Calibration: the batches fall into at most GRAM_CHUNKS chunks, fixed by the batch count alone
  and dealt to the ranks in turn; a rank runs and keeps only its own chunks' batches. A block's
  Gram is the chunks' partial sums added in chunk order on every rank, so its bits do not depend
  on how many ranks there are.
- Factorization and GPTQ: a block's matrices are dealt out by their predicted cost, and each
  result is broadcast from the rank that made it. A matrix is factorized on one thread (as
  `factorize_many` does on a CPU) or one device, whichever process does it.
- Healing: every rank heals the block alike, on the same samples, each sent by its owner.
- Writing: rank 0 alone writes the progress and the checkpoint, and reads the progress for all.

So N ranks give the single process's checkpoint byte for byte, given the same threads per
process (a Gram's matrix products and healing's steps use every intra-op thread a process has).
"""

from __future__ import annotations

import atexit
import datetime
import functools
import heapq
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map

from zoo.errors import ZooError

T = TypeVar("T")
# Chunks a stack's calibration batches fall into: the most ranks that share the calibration work
# (more ranks still share the factorization), and what one rank holds at once for the Grams'
# ordered sum (its own chunk's partial, the running total and the one being received).
GRAM_CHUNKS = 16
# How long a rank waits for the others at a collective: rank 0 alone scores the base before
# compressing, which takes a while on a large model. A rank that dies ends the run at once.
TIMEOUT = datetime.timedelta(hours=3)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """This process's place in torch.distributed's default group; a world of one without one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def launched(cls) -> Ranks:
        """This process's place as torchrun's environment gives it, whether or not the group is joined
        (a plan is made before it is)."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    @property
    def main(self) -> bool:
        """Rank 0, which writes, scores and reports."""
        return self.rank == 0

    def chunks(self, batches: int) -> list[range]:
        """Every rank's chunks of `batches` calibration batches, in order (the same on every rank)."""
        if batches < self.size and self.size > 1:
            raise ZooError(
                f"{self.size} processes need at least {self.size} calibration batches, and the run has "
                f"{batches}: give more --n-samples or start fewer processes"
            )
        k = min(GRAM_CHUNKS, batches)
        return [range(c * batches // k, (c + 1) * batches // k) for c in range(k)]

    def owner(self, chunk: int) -> int:
        return chunk % self.size

    def own(self, chunks: Sequence[range]) -> list[int]:
        """The batches this rank runs and keeps: its chunks' batches, in order."""
        return [i for c, batches in enumerate(chunks) if self.owner(c) == self.rank for i in batches]

    def deal(self, costs: dict[str, float]) -> dict[str, int]:
        """Each item's rank: largest cost first to the least loaded rank (ties to the lower rank),
        the same on every rank since it reads only `costs`."""
        loads = [(0.0, r) for r in range(self.size)]
        owners = {}
        for name in sorted(costs, key=lambda n: (-costs[n], n)):
            load, rank = heapq.heappop(loads)
            owners[name] = rank
            heapq.heappush(loads, (load + costs[name], rank))
        return owners

    def broadcast(self, obj: T, src: int) -> T:
        """`obj` as rank `src` holds it, on every rank (pickled: tensors travel on the CPU and come
        back to the device they were on)."""
        if self.size == 1:
            return obj
        device = _tensor_device(obj) if self.rank == src else None
        box = [tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, obj) if self.rank == src else None]
        box.append(device)
        with lost_rank(self):
            dist.broadcast_object_list(box, src=src)
        received, device = box
        if device is None:
            return received
        if device.type == "cuda":  # the sender's GPU is not this rank's
            device = torch.device("cuda", torch.cuda.current_device())
        return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, received)

    def broadcast_tensors(self, tensors: list[torch.Tensor], src: int) -> list[torch.Tensor]:
        """Rank `src`'s tensors into `tensors` (same shapes and dtypes on every rank), in place."""
        if self.size == 1:
            return tensors
        nccl = dist.get_backend() == "nccl"
        with lost_rank(self):
            for t in tensors:
                carrier = t if nccl == (t.device.type == "cuda") else t.to("cuda" if nccl else "cpu")
                dist.broadcast(carrier, src=src)
                if carrier is not t:
                    t.copy_(carrier)
        return tensors

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list = [None] * self.size
        with lost_rank(self):
            dist.all_gather_object(out, obj)
        return out


ALONE = Ranks()  # one process: the default wherever work may be shared


def _tensor_device(obj) -> torch.device | None:
    devices = []
    tree_map(lambda t: devices.append(t.device) if isinstance(t, torch.Tensor) else t, obj)
    return devices[0] if devices else None


@contextmanager
def lost_rank(ranks: Ranks) -> Iterator[None]:
    """A collective that fails because another rank died: one line saying so, and that the run resumes."""
    try:
        yield
    except (RuntimeError, dist.DistBackendError) as exc:
        raise ZooError(
            f"rank {ranks.rank} of {ranks.size}: another rank stopped answering ({type(exc).__name__} in a "
            "collective); torchrun's summary names the rank that failed first"
        ) from exc


def summed_in_order(
    ranks: Ranks, chunks: int, partial: Callable[[int], list[torch.Tensor]], template: Callable[[], list[torch.Tensor]]
) -> list[torch.Tensor]:
    """Σ over chunks, in chunk order, of `partial(c)` (tensors computed by the chunk's owner), on
    every rank. Chunks go round by round, one per rank: each rank computes its own, then all
    receive them in order; `template()` gives zeros of the partial's shapes to receive into."""
    total: list[torch.Tensor] | None = None
    for start in range(0, chunks, ranks.size):
        mine = start + ranks.rank
        own = partial(mine) if mine < chunks else None
        for c in range(start, min(start + ranks.size, chunks)):
            part = own if ranks.owner(c) == ranks.rank else ranks.broadcast_tensors(template(), ranks.owner(c))
            if ranks.owner(c) == ranks.rank:
                ranks.broadcast_tensors(part, ranks.rank)
            total = part if total is None else [a.add_(b) for a, b in zip(total, part, strict=True)]
    assert total is not None  # at least one chunk: Ranks.chunks refuses none
    return total


def join_from_environment() -> Ranks:
    """Join the process group torchrun describes in the environment (WORLD_SIZE and the rest):
    NCCL when this process has a GPU, gloo otherwise; a world of one when not started by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return Ranks.current()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(dist.destroy_process_group)  # a rank that is done (not rank 0) leaves cleanly
    ranks = Ranks.current()
    signal.signal(signal.SIGTERM, functools.partial(_stopped, ranks))
    return ranks


def _stopped(ranks: Ranks, _signum, _frame) -> None:
    """torchrun stops the other ranks when one fails: each says so in one line, and what is kept."""
    raise ZooError(
        f"rank {ranks.rank} of {ranks.size}: stopped by torchrun because another rank failed (its summary names it)"
    )
