"""Micro-batching of embedding jobs: concurrent requests share one model call.

One worker thread owns the encoder, so embedding never runs on the event loop and the model is
never called concurrently. A job is one tracklet ``[T, 3, H, W]``. The worker takes the oldest
pending job, then waits up to ``max_wait_ms`` (counted from that job's arrival) for more jobs with
the *same shape* until ``max_batch`` are collected, stacks them into ``[B, T, 3, H, W]`` and runs
one ``encode``. Only equal shapes are batched: the model must see exactly each job's frames, and
padding a short tracklet with repeated frames would change its descriptor. Jobs of other shapes
keep their place in the queue for the next round. ``max_batch=1`` disables batching (each job is
its own model call, no waiting).

Batching changes nothing about the result: encoders are batch-independent (see ``Encoder``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

EncodeFn = Callable[[np.ndarray], np.ndarray]
BatchObserver = Callable[[int, float], None]


class BatcherClosed(RuntimeError):
    """The batcher was shut down; no more jobs are accepted."""


@dataclass
class _Job:
    frames: np.ndarray
    future: Future[np.ndarray]
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(
        self,
        encode: EncodeFn,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        observer: BatchObserver | None = None,
        name: str = "embed-worker",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._observer = observer
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- submitting ---------------------------------------------------------------------------
    def submit(self, frames: np.ndarray) -> Future[np.ndarray]:
        """Queue one tracklet ``[T, 3, H, W]``; the future resolves to its descriptor ``[D]``."""
        if frames.ndim != 4:
            raise ValueError(f"a job is one tracklet [T, 3, H, W], got shape {frames.shape}")
        job = _Job(np.ascontiguousarray(frames, dtype=np.float32), Future())
        with self._cond:
            if self._closed:
                raise BatcherClosed("the embedding worker is shut down")
            self._pending.append(job)
            self._cond.notify()
        return job.future

    async def embed(self, frames: np.ndarray) -> np.ndarray:
        """Async form of ``submit``: await the descriptor without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(frames))

    # ---- the worker ---------------------------------------------------------------------------
    def _take_batch(self) -> list[_Job] | None:
        """Block until a batch is ready (or the batcher is closed and drained: None)."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._pending.popleft()
            batch = [first]
            shape = first.frames.shape
            deadline = first.arrived + self.max_wait
            while len(batch) < self.max_batch:
                # Pull every queued job of the same shape, keeping the others in order.
                kept: deque[_Job] = deque()
                while self._pending and len(batch) < self.max_batch:
                    job = self._pending.popleft()
                    (batch if job.frames.shape == shape else kept).append(job)
                kept.extend(self._pending)
                self._pending = kept
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._closed:
                    break
                self._cond.wait(timeout=remaining)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                out = self._encode(np.stack([j.frames for j in live]))
                if out.shape[0] != len(live):
                    raise RuntimeError(f"encoder returned {out.shape[0]} descriptors for {len(live)} tracklets")
            except BaseException as exc:  # every waiter must hear about the failure
                log.exception("embedding batch of %d failed", len(live))
                for j in live:
                    j.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - start
            for j, row in zip(live, out, strict=True):
                j.future.set_result(row)
            if self._observer is not None:
                self._observer(len(live), elapsed)

    # ---- lifecycle ----------------------------------------------------------------------------
    def close(self, timeout: float | None = 30.0) -> None:
        """Stop accepting jobs, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
