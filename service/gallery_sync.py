"""Follow the store's change feed so that API replicas on one store see each other's writes.

Each server keeps an in-process view of the gallery (the metadata table and the re-ranking graph;
with a FAISS kind also the vectors). ``GallerySync`` is a daemon thread that polls
``Store.changes_since`` every ``settings.sync_interval`` seconds and applies what other replicas
wrote (``Gallery.apply_changes``; a replica's own writes come back too and are no-ops). When the
feed shows the store re-embedded with another checkpoint (a ``reembed`` job, run by any replica),
the server switches to it (``Runtime.follow_store_model``). It never
stops the server: an error (store or Milvus unreachable) is logged, counted in
``sasreid_gallery_sync_errors_total`` and retried at the next poll from the same position. A replica
that fell further behind than the feed retains (``ChangesTrimmed``) marks its gallery dirty: the
maintenance task then reconciles it with the store, which also resets its feed position.

Polls take the runtime's ``write_lock``, so a change is never applied while this process is between
its own store write and index write (the two would both add the record). A poll applies at most
``batch`` changes under the lock; a full batch is followed at once by the next, so catching up
after a burst interleaves with this replica's own writes.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from index.store import ChangesTrimmed
from service.core.errors import ModelSwitchError

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
# Back-to-back full batches per poll, so one poll cannot spin for ever on a busy feed.
_MAX_ROUNDS = 100


class SyncError(RuntimeError):
    """The feed cannot be applied to this server (the message says why and what to do)."""


class GallerySync:
    def __init__(self, runtime: Runtime, interval: float, batch: int = DEFAULT_BATCH) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        self.runtime = runtime
        self.interval = interval
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the gallery sync thread is already started")
        self._thread = threading.Thread(target=self._run, name="sasreid-gallery-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the gallery sync thread did not stop within %.0fs", timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # never let the thread die: the next poll retries
                self.runtime.metrics.sync_errors.inc()
                if not self._failing:
                    log.warning(
                        "gallery sync failed (retrying every %.2gs): %s", self.interval, exc, exc_info=True
                    )
                else:
                    log.debug("gallery sync still failing: %s", exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("gallery sync recovered")
                self._failing = False

    def poll(self) -> int:
        """Apply the changes written since the last poll; returns how many were read."""
        total = 0
        for _ in range(_MAX_ROUNDS):
            read = self._apply_batch()
            total += read
            if read < self.batch or self._stop.is_set():
                break
        return total

    def _apply_batch(self) -> int:
        rt = self.runtime
        if not rt.ready or rt.dirty:
            return 0  # not restored yet, or a rebuild is due that resets the position anyway
        with rt.write_lock:
            gallery, position = rt.gallery, rt.feed_position
            if gallery is None or position is None or rt.dirty:
                return 0
            try:
                changes, last = rt.store.changes_since(position, self.batch)
            except ChangesTrimmed as exc:
                rt.mark_dirty(f"this replica fell behind the store's change feed: {exc}")
                return 0
            if not changes:
                return 0
            switched = False
            if any(c.op == "add" for c in changes):
                fingerprint = rt.store.info().fingerprint
                switched = fingerprint is not None and fingerprint != rt.encoder.fingerprint
            if not switched:
                gallery.apply_changes(rt.store, changes)
                rt.feed_position = last
        if switched:
            # Re-embedded with another checkpoint: load it and index the store anew (outside the
            # lock: this server goes on answering with its current model meanwhile).
            try:
                rt.follow_store_model()
            except ModelSwitchError as exc:
                raise SyncError(str(exc)) from exc
            return 0
        rt.metrics.sync_changes.inc(len(changes))
        rt.metrics.sync_position.set(last)
        return len(changes)
