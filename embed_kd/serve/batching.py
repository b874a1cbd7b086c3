"""Micro-batching: concurrent requests share one encoder call, which runs off the event loop.

Encoding one query costs almost as much as encoding a few (the transformer's matrix products are
wider, not more numerous), so a server that encodes each request on its own wastes the CPU under
load, and one that encodes on the event loop stalls every other connection meanwhile. The
:class:`MicroBatcher` queues the items of incoming requests; a single worker task takes the first
waiting request, then keeps collecting requests for at most ``max_wait_ms`` or until
``max_batch_size`` items are gathered, runs ``process(items)`` once in a worker thread, and hands
each request its slice of the results. While one batch is being encoded, the next one gathers,
so under load batches grow by themselves. A request with more items than ``max_batch_size`` is
processed whole, never split.

Arrivals (adaptive gathering). The server knows more than the queue does: a request that has
reached it but is still being read and validated will be submitted in a moment. The app
:meth:`~MicroBatcher.announce`\s each ``/search`` request as it arrives and hands the
:class:`Arrival` to :meth:`~MicroBatcher.submit` (or :meth:`~MicroBatcher.withdraw`\s it when it
is refused before that). Once a batcher has seen an announcement it gathers only while an
announced request is still on its way, and for at most ``max_wait_ms``: a lone client pays no
gathering wait at all, and under load the batch takes in every request already inside the server.
A batcher that is never told of arrivals (a library user calling ``submit`` alone) always gathers
for the whole window.

``process`` receives a list of items and must return a list of results of the same length. If it
raises for a batch of several requests, the failure is isolated: each request of the batch is
processed again on its own, so only the request whose items fail gets the exception (the others
get their results, a little later); a batch of one request hands it the exception directly.

>>> import asyncio
>>> async def demo():
...     calls = []
...     def process(items):
...         calls.append(len(items))
...         return [x * 2 for x in items]
...     batcher = MicroBatcher(process, max_batch_size=8, max_wait_ms=20)
...     await batcher.start()
...     outs = await asyncio.gather(*(batcher.submit([i]) for i in range(5)))
...     await batcher.stop()
...     return outs, calls
>>> asyncio.run(demo())
([[0], [2], [4], [6], [8]], [5])
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """Counters for ``GET /info``: how well requests were batched."""

    batches: int = 0
    requests: int = 0
    items: int = 0
    largest_batch: int = 0
    errors: int = 0

    def as_dict(self) -> dict:
        return {
            "batches": self.batches, "requests": self.requests, "items": self.items,
            "largest_batch": self.largest_batch, "errors": self.errors,
            "mean_batch_items": (self.items / self.batches) if self.batches else None,
        }


@dataclass
class Arrival:
    """A request that reached the server and may soon submit (see :meth:`MicroBatcher.announce`)."""

    open: bool = True


@dataclass
class _Pending:
    items: list
    future: asyncio.Future


@dataclass
class MicroBatcher:
    """Collect concurrent ``submit`` calls into batches for ``process`` (run in one worker thread)."""

    process: Callable[[list], Sequence]
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms < float("inf"):  # nan and inf too: a wait that never ends
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms}")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._upcoming = 0  # announced requests that have not submitted (or withdrawn) yet
        self._tracking = False  # set by the first announce(): gather only while arrivals are on their way

    def announce(self) -> Arrival:
        """A request has reached the server and will probably :meth:`submit` soon."""
        self._tracking = True
        self._upcoming += 1
        return Arrival()

    def withdraw(self, arrival: Arrival) -> None:
        """The announced request will not submit (refused, failed, or already submitted: a no-op)."""
        if arrival.open:
            arrival.open = False
            self._upcoming -= 1

    async def start(self) -> None:
        """Start the worker task (call from the event loop that will call :meth:`submit`)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-kd-encode")
        self._task = asyncio.create_task(self._run(), name="embed-kd-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, items: list, arrival: Arrival | None = None) -> list:
        """Queue ``items`` and wait for their results (in the same order); ``arrival``: the
        :meth:`announce` of this request, if it was announced."""
        if arrival is not None:
            self.withdraw(arrival)  # no longer on its way: it is in the queue from here on
        if self._queue is None or self._task is None:
            raise RuntimeError("MicroBatcher.submit() before start()")
        if self._task.done():  # the worker died: fail loudly rather than hang
            raise RuntimeError("the micro-batching worker has stopped")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(list(items), fut))
        return await fut

    async def _collect(self) -> list[_Pending]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        n = len(batch[0].items)
        deadline = loop.time() + self.max_wait_ms / 1000.0
        while n < self.max_batch_size:
            remaining = deadline - loop.time()
            if self._tracking and self._upcoming <= 0 and self._queue.empty():
                break  # nobody else is inside the server: waiting would only add latency
            try:
                if remaining <= 0:
                    nxt = self._queue.get_nowait()
                else:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            batch.append(nxt)
            n += len(nxt.items)
        return batch

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        """Process each request of a failed batch alone: a failure reaches only its own request."""
        loop = asyncio.get_running_loop()
        for p in batch:
            if p.future.done():
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.process, p.items)
                if len(results) != len(p.items):
                    raise RuntimeError(f"process() returned {len(results)} results for {len(p.items)} items")
            except asyncio.CancelledError:
                for q in batch:
                    if not q.future.done():
                        q.future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - this request's own failure
                self.stats.errors += 1
                if not p.future.done():
                    p.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.requests += 1
            self.stats.items += len(p.items)
            self.stats.largest_batch = max(self.stats.largest_batch, len(p.items))
            if not p.future.done():
                p.future.set_result(list(results))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [p for p in batch if not p.future.done()]  # clients that went away
            if not batch:
                continue
            items = [it for p in batch for it in p.items]
            try:
                results = await loop.run_in_executor(self._executor, self.process, items)
                if len(results) != len(items):
                    raise RuntimeError(f"process() returned {len(results)} results for {len(items)} items")
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - isolated to the request(s) that cause it
                if len(batch) == 1:
                    logger.warning("request of %d item(s) failed: %s: %s", len(items), type(exc).__name__, exc)
                    self.stats.errors += 1
                    batch[0].future.set_exception(exc)
                    continue
                logger.warning("batch of %d requests failed (%s: %s); retrying each request on its own",
                               len(batch), type(exc).__name__, exc)
                await self._one_by_one(batch)
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.items += len(items)
            self.stats.largest_batch = max(self.stats.largest_batch, len(items))
            start = 0
            for p in batch:
                end = start + len(p.items)
                if not p.future.done():
                    p.future.set_result(list(results[start:end]))
                start = end
