"""Multi-process runs on ``torch.distributed``: who am I, split the work, agree on the outcome.

embed-kd never spawns processes itself. A launcher does — ``torchrun`` (``torch.distributed.run``),
``accelerate launch``, or a cluster scheduler running either — and sets the standard environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). When ``WORLD_SIZE`` is
above 1, :func:`init` joins the process group (``env://``) and every command that supports it
(``score-teacher``, ``train``, corpus encoding in ``eval`` / ``index build``) splits its work:

- work is split by *position* (query chunks, document rows), never by a message exchange, so the
  data that moves between processes is files on a shared folder plus a few small Python objects
  (``all_gather_object``);
- every collective step goes through :func:`agree`: each process reports success or its error,
  and if any failed every process raises (no process is left waiting at a barrier for one that
  died with a user error);
- backend: ``gloo`` on CPU; ``cpu:gloo,cuda:nccl`` when CUDA is available (the trainer's gradients
  go through NCCL, our small object exchanges through gloo);
- timeout: ``$EMBED_KD_DIST_TIMEOUT_S`` seconds per collective (default 86400: shards of a long
  scoring run finish hours apart; ``torchrun`` tears the group down anyway when a worker crashes);
- teardown: every command ends with :func:`shutdown` — a last barrier when it succeeded on this
  process, then ``destroy_process_group`` — and an ``atexit`` hook destroys a group that is still
  up. Left to the interpreter's exit, gloo's connection threads can be destroyed while a peer is
  still closing its sockets, and the process dies with ``terminate called without an active
  exception`` (SIGABRT) after its work was done.

Multi-node runs need the output folder (and the embedding cache) on a filesystem every node sees.

>>> shard_range(10, 0, 3), shard_range(10, 1, 3), shard_range(10, 2, 3)
((0, 4), (4, 7), (7, 10))
>>> get_world().world_size >= 1
True
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

from embed_kd.device import current_device, env_int
from embed_kd.errors import EmbedKDError

logger = logging.getLogger(__name__)
TIMEOUT_ENV = "EMBED_KD_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def get_world() -> World:
    """This process's place in the launch, from the launcher's environment (1 process when absent)."""
    world_size = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    local_rank = env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise EmbedKDError(f"RANK={rank}, WORLD_SIZE={world_size}: expected 0 <= RANK < WORLD_SIZE")
    return World(rank, world_size, local_rank)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` slice of ``n`` items that ``rank`` of ``world_size`` owns.

    Sizes differ by at most one; the first ``n mod world_size`` ranks take one more.

    ========  =========================================
    input     meaning
    ========  =========================================
    n         items to split (>= 0)
    rank      0-based process index
    world     number of processes (>= 1)
    ========  =========================================
    """
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"shard_range: expected n >= 0 and 0 <= rank < world_size, got {n}, {rank}, {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def is_initialized() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return dist.is_available() and dist.is_initialized()


def active() -> World:
    """The world when a process group is up, else a single-process world (no collectives needed)."""
    return get_world() if is_initialized() else World()


def init() -> World:
    """Join the launcher's process group when ``WORLD_SIZE > 1`` (idempotent); returns the world."""
    w = get_world()
    if not w.distributed or is_initialized():
        return w
    import torch
    import torch.distributed as dist

    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise EmbedKDError(f"WORLD_SIZE={w.world_size} but {', '.join(missing)} is not set; launch with torchrun "
                           "or accelerate launch")
    timeout = datetime.timedelta(seconds=env_int(TIMEOUT_ENV, 86400))
    if torch.cuda.is_available():
        torch.cuda.set_device(w.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timeout)
    atexit.register(shutdown, False)
    logger.info("process group up: rank %d of %d (local %d), backend %s", w.rank, w.world_size, w.local_rank,
                backend)
    return w


def device() -> str:
    """The device models of this process load on (:func:`embed_kd.device.current_device`): the
    selected ``--device``, else ``$EMBED_KD_DEVICE``, else ``auto`` — ``cuda:LOCAL_RANK`` under a
    launcher with CUDA, ``cuda:0`` / ``mps`` when available, ``cpu`` otherwise."""
    return current_device()


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (``obj`` itself without a process group)."""
    if not is_initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree(error: BaseException | None, what: str) -> None:
    """A barrier that also shares the outcome: raise when this or any other process failed.

    The failing process re-raises its own error; the others raise :class:`EmbedKDError` naming the
    rank and its message, so every process exits instead of waiting for a peer that is gone.
    """
    if not is_initialized():
        if error is not None:
            raise error
        return
    report = None if error is None else f"{type(error).__name__}: {error}"
    reports = all_gather_object(report)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(reports) if m is not None]
    if failed:
        r, m = failed[0]
        raise EmbedKDError(f"{what}: process {r} of {len(reports)} failed ({m})")


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Run the body on every process, then :func:`agree` on its outcome (see the module docstring)."""
    err: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shared with the peers, then re-raised
        err = exc
    agree(err, what)


def barrier() -> None:
    agree(None, "barrier")


def shutdown(succeeded: bool = True) -> None:
    """Tear the process group down in order (a no-op without one; safe to call twice).

    ``succeeded``: this process finished its command; it then waits at a last barrier so that no
    process closes its connections while a peer is still using them. After a failure there is no
    barrier (a peer may be gone, or stuck in another collective until the launcher stops it).
    """
    if not is_initialized():
        return
    import torch.distributed as dist

    if succeeded:
        dist.barrier()
    dist.destroy_process_group()
