"""Several processes, one run: who this process is, waiting for the others, gathering what they hold.

``accelerate launch --multi_gpu --num_processes N`` (through ``torchrun``; on a machine without GPUs its
processes run on the CPU) and ``torchrun --nproc_per_node N`` set ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``;
:func:`init_from_env` then joins a gloo process group. Collectives time out (10 minutes by default) instead of
waiting forever for a process that died, and the launcher ends the others when one fails.

In a single process every helper is the identity (``gather`` returns ``[obj]``, ``barrier`` returns at once),
so callers run one code path either way.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")
DEFAULT_TIMEOUT = timedelta(minutes=10)


def env_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 when not launched by torchrun or accelerate)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the launcher's process group (gloo) when ``WORLD_SIZE`` > 1 and none exists yet.

    Returns True when this call created the group (the caller then ends it with :func:`destroy`).
    """
    if is_initialized() or env_world_size() == 1:
        return False
    dist.init_process_group("gloo", timeout=timeout)
    return True


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(timeout: timedelta = DEFAULT_TIMEOUT):
    """``with process_group():`` — joined on entry when launched distributed, left on exit if we joined it."""
    created = init_from_env(timeout)
    try:
        yield
    finally:
        if created:
            destroy()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that writes shared results (database, report, merged manifests)."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def gather(obj: T) -> list[T]:
    """``obj`` of every process, in rank order, on every process (any picklable value)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_lists(items: list[T]) -> list[T]:
    """The concatenation of every process's list, in rank order."""
    return [x for part in gather(items) for x in part]


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_slice(n: int, rank: int, world: int) -> slice:
    """The contiguous block of ``range(n)`` that process ``rank`` of ``world`` takes: block sizes differ by at
    most one, and concatenating the blocks in rank order gives back ``range(n)`` in order (so anything gathered
    rank by rank comes back in the order a single process would have used).

    >>> [list(range(5))[shard_slice(5, r, 2)] for r in range(2)]
    [[0, 1], [2, 3, 4]]
    """
    if not (0 <= rank < world):
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return slice(rank * n // world, (rank + 1) * n // world)
