"""The re-ranking graph kept in the store, so a start loads it instead of rebuilding it.

Building the k-NN graph of a gallery costs O(N^2 d) (148 s for 100k items of dim 768 on 2 cores);
loading it costs O(N k). The store holds one blob per graph length k (``Store.put_blob``): a
``GraphState`` (every item's neighbour ids and squared distances, completeness flag, row maximum
and the item attaining it), a 64-bit digest of each item's descriptor, the checkpoint fingerprint
of the store's descriptors and a SHA-256 over the arrays.

A blob is self-describing: it is the exact graph of the items it lists, whatever the store holds
now. At start (``DurableGraph.restore``) the blob is checked (format, dimension, k, fingerprint,
SHA-256, array shapes and targets) and then caught up with the store: items it lists that the store
no longer has (or has with another descriptor) are removed, the store's items it lacks are added,
both through the graph's ordinary incremental updates, whose result equals a graph built from
scratch on the same items (tests/index/test_graph_store.py). A blob that fails a check, or one so
far behind that catching up would cost more than building, is replaced by a rebuilt graph.

While the gallery runs, changes are counted and a daemon thread writes a fresh blob after
``SAVE_EVERY`` changes or ``SAVE_AFTER_S`` seconds after the first unsaved change, whichever comes
first, and at ``close``. The write happens outside the gallery's locks (the state is copied under
its read lock). A process killed before a save loses nothing but time: the next start catches up
the missing changes. Replicas on one store each save their own graph; every blob they write is
consistent, so the last one wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from index.neighbor_graph import GalleryNeighborGraph, GraphState
from index.store import Store, StoreError

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1
_MAGIC = b"SASGRAPH"
SAVE_EVERY = 256  # unsaved changes that trigger a save (bounds the catch-up work after a crash)
SAVE_AFTER_S = 30.0  # seconds an unsaved change may wait for a save
_ADD_CHUNK = 4096  # items per incremental add while catching up
_ARRAYS = ("ids", "nbr", "nbr_d", "complete", "rowmax", "rowarg", "checks")


def blob_name(k: int) -> str:
    """The store blob holding the graph with lists of length ``k``."""
    return f"rerank-graph/k{k}"


def descriptor_checks(feats: np.ndarray) -> np.ndarray:
    """A 64-bit BLAKE2b digest of each descriptor's float32 bytes: uint64 [n] for feats [n, dim]."""
    rows = np.ascontiguousarray(feats, dtype=np.float32)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in rows),
        dtype=np.uint64,
        count=len(rows),
    )


def encode(state: GraphState, checks: np.ndarray, fingerprint: str | None) -> bytes:
    """The blob for ``state`` with descriptor digests ``checks`` (uint64 [n], in ``state.ids`` order)."""
    arrays = {name: getattr(state, name) for name in _ARRAYS[:-1]} | {"checks": checks}
    body = b"".join(np.ascontiguousarray(arrays[name]).tobytes() for name in _ARRAYS)
    header = {
        "format": GRAPH_FORMAT,
        "dim": state.dim,
        "k": state.k,
        "width": state.width,
        "count": len(state.ids),
        "fingerprint": fingerprint,
        "arrays": [[name, arrays[name].dtype.str, list(arrays[name].shape)] for name in _ARRAYS],
        "sha256": hashlib.sha256(body).hexdigest(),
        "saved_at": time.time(),
    }
    head = json.dumps(header).encode()
    return _MAGIC + len(head).to_bytes(4, "little") + head + body


def decode(data: bytes) -> tuple[GraphState, np.ndarray, dict[str, object]]:
    """(state, checks, header) of a blob; ValueError naming what is wrong with a damaged one."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        raise ValueError("not a re-ranking graph blob")
    at = len(_MAGIC) + 4
    size = int.from_bytes(data[len(_MAGIC) : at], "little")
    try:
        header = json.loads(data[at : at + size])
    except ValueError as exc:
        raise ValueError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != GRAPH_FORMAT:
        raise ValueError(f"format {header.get('format') if isinstance(header, dict) else '?'}, expected {GRAPH_FORMAT}")
    body = memoryview(data)[at + size :]
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise ValueError("the arrays do not match their SHA-256 (torn or corrupted)")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape in header["arrays"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dt.itemsize > len(body):
            raise ValueError(f"array {name} runs past the end of the blob")
        arrays[name] = np.frombuffer(body, dtype=dt, count=count, offset=offset).reshape(shape).copy()
        offset += count * dt.itemsize
    if offset != len(body) or set(arrays) != set(_ARRAYS):
        raise ValueError("the arrays do not fill the blob exactly")
    state = GraphState(
        dim=int(header["dim"]),
        k=int(header["k"]),
        width=int(header["width"]),
        **{name: arrays[name] for name in _ARRAYS[:-1]},
    )
    state.check()
    checks = arrays["checks"]
    if checks.shape != state.ids.shape or len(state.ids) != header.get("count"):
        raise ValueError(f"count {header.get('count')} disagrees with the arrays ({len(state.ids)} items)")
    return state, checks, header


Captured = tuple[GraphState, np.ndarray, int]  # state, descriptor digests, pending changes included
Snapshot = Callable[["DurableGraph"], "Captured | None"]


@dataclass(frozen=True)
class GraphLoad:
    """How a start obtained its graph: ``persisted`` (loaded, then ``added`` / ``removed`` items
    caught up with the store) or ``rebuilt`` (``reason`` says why); ``seconds`` it took."""

    source: Literal["persisted", "rebuilt"]
    reason: str
    count: int
    added: int
    removed: int
    seconds: float


class DurableGraph:
    """One gallery's re-ranking graph in ``store``: restored at start, saved as it changes.

    The owner calls ``added`` / ``removed`` under its write lock after each graph update, and
    ``watch(snapshot)`` with a bound method that returns ``capture(graph)`` taken under its read
    lock (None once this object was retired); it is held weakly, so a gallery dropped without
    ``close`` lets the saver thread end.
    """

    def __init__(self, store: Store, dim: int, k: int, fingerprint: str | None) -> None:
        self.store, self.dim, self.k, self.fingerprint = store, dim, k, fingerprint
        self.name = blob_name(k)
        self.last_load: GraphLoad | None = None
        self.saves = 0
        self._checks: dict[int, int] = {}  # id -> descriptor digest of the items in the graph
        self._pending = 0
        self._first_pending = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._snapshot: weakref.WeakMethod[Snapshot] | None = None
        self._save_lock = threading.Lock()  # one blob write at a time

    # ---- start --------------------------------------------------------------------------
    def restore(self, ids: np.ndarray, feats: np.ndarray) -> GalleryNeighborGraph:
        """The graph over ``ids`` int64 [n] / ``feats`` float32 [n, dim] (unit rows): the stored
        one caught up with these items, or a rebuilt one (then saved). Logs which."""
        t0 = time.perf_counter()
        ids = np.asarray(ids, dtype=np.int64)
        checks = descriptor_checks(feats)
        self._checks = dict(zip(ids.tolist(), checks.tolist(), strict=True))
        try:
            data = self.store.get_blob(self.name)
        except StoreError as exc:  # the graph can still be built
            data, why = None, f"the stored graph could not be read ({exc})"
        else:
            why = "no graph stored yet"
        graph: GalleryNeighborGraph | None = None
        added = removed = 0
        if data is not None:
            try:
                graph, added, removed = self._caught_up(data, ids, feats, checks)
            except ValueError as exc:
                why = f"the stored graph is unusable: {exc}"
            else:
                if graph is None:
                    why = f"the stored graph is more than {len(ids) // 2} items behind: building is cheaper"
        if graph is None:
            graph = GalleryNeighborGraph(self.dim, k=self.k)
            for s in range(0, len(ids), _ADD_CHUNK * 16):
                graph.add(ids[s : s + _ADD_CHUNK * 16], feats[s : s + _ADD_CHUNK * 16])
            try:
                self.save_now(graph)
            except StoreError as exc:  # serve anyway; the saver retries once watching
                log.warning("re-ranking graph not saved to the store (retried later): %s", exc)
                self.note(max(len(ids), 1))
            self.last_load = GraphLoad("rebuilt", why, len(ids), len(ids), 0, time.perf_counter() - t0)
            # An empty gallery has nothing to rebuild: no warning for a fresh deployment.
            log.log(
                logging.WARNING if len(ids) else logging.INFO,
                "re-ranking graph rebuilt and saved to the store: %s (%d items, %.1fs)",
                why, len(ids), self.last_load.seconds,
            )
            return graph
        self.last_load = GraphLoad("persisted", "", len(ids), added, removed, time.perf_counter() - t0)
        if added or removed:
            self.note(added + removed)  # the saver writes the caught-up graph soon
        log.info(
            "re-ranking graph loaded from the store: %d items, %d added and %d removed to catch up (%.1fs)",
            len(ids), added, removed, self.last_load.seconds,
        )
        return graph

    def _caught_up(
        self, data: bytes, ids: np.ndarray, feats: np.ndarray, checks: np.ndarray
    ) -> tuple[GalleryNeighborGraph | None, int, int]:
        """(graph, added, removed) from a blob, or (None, 0, 0) when building is cheaper;
        ValueError when the blob does not fit this gallery."""
        state, stored_checks, header = decode(data)
        if (state.dim, state.k) != (self.dim, self.k):
            raise ValueError(f"it is dim={state.dim} k={state.k}, this gallery dim={self.dim} k={self.k}")
        if header.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"it was built from descriptors of checkpoint {header.get('fingerprint')}, "
                f"the store holds {self.fingerprint}"
            )
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        at = np.searchsorted(sorted_ids, state.ids).clip(max=max(len(ids) - 1, 0))
        here = (sorted_ids[at] == state.ids) if len(ids) else np.zeros(len(state.ids), dtype=bool)
        rows = order[at]
        same = here & (checks[rows] == stored_checks) if len(ids) else here
        gone = state.ids[~same]  # deleted, or stored again with another descriptor
        in_state = np.zeros(len(ids), dtype=bool)
        in_state[rows[same]] = True
        new = np.flatnonzero(~in_state)
        # Adding A items to N costs ~A N distances, building N items ~N^2 / 2.
        if 2 * len(new) > len(ids) and len(ids) > _ADD_CHUNK:
            return None, 0, 0
        state_feats = np.zeros((len(state.ids), self.dim), dtype=np.float32)
        state_feats[same] = feats[rows[same]]
        graph = GalleryNeighborGraph.from_state(state, state_feats)
        if len(gone):
            graph.remove(gone)
        for s in range(0, len(new), _ADD_CHUNK):
            chunk = new[s : s + _ADD_CHUNK]
            graph.add(ids[chunk], feats[chunk])
        return graph, len(new), len(gone)

    # ---- running ------------------------------------------------------------------------
    def watch(self, snapshot: Snapshot) -> None:
        """Save through ``snapshot(self)`` (a bound method of the owner, held weakly) from now on."""
        self._snapshot = weakref.WeakMethod(snapshot)
        self.note(0)  # a caught-up or unsaved graph from ``restore`` is saved without waiting for a change

    def added(self, ids: np.ndarray, feats: np.ndarray) -> None:
        """Items were added to the graph (call under the owner's write lock)."""
        self._checks.update(zip(np.asarray(ids).tolist(), descriptor_checks(feats).tolist(), strict=True))
        self.note(len(ids))

    def removed(self, ids: np.ndarray) -> None:
        """Items were removed from the graph (call under the owner's write lock)."""
        for i in np.asarray(ids).tolist():
            self._checks.pop(i, None)
        self.note(len(ids))

    @property
    def pending(self) -> int:
        """Changes not in the stored graph yet."""
        return self._pending

    def note(self, changes: int) -> None:
        """Count ``changes`` more unsaved changes; start the saver when there are some."""
        with self._cond:
            if changes > 0 and self._pending == 0:
                self._first_pending = time.monotonic()
            self._pending += max(changes, 0)
            if self._pending and self._thread is None and not self._closed and self._snapshot is not None:
                self._thread = threading.Thread(target=self._run, name="graph-saver", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                # Sleep until a save is due: enough changes, or the oldest one waited long enough.
                while not self._closed and not self._due():
                    wait = SAVE_AFTER_S - (time.monotonic() - self._first_pending) if self._pending else None
                    self._cond.wait(timeout=wait)
                if self._closed:
                    return
            snapshot = self._snapshot() if self._snapshot is not None else None
            captured = snapshot(self) if snapshot is not None else None
            del snapshot  # no strong reference to the gallery while sleeping
            if captured is None:
                return  # the gallery is gone, or has replaced this graph
            try:
                self._save(*captured)
            except StoreError as exc:  # retried after the next change
                log.warning("re-ranking graph not saved to the store (retried later): %s", exc)
                with self._cond:
                    self._first_pending = time.monotonic()

    def _due(self) -> bool:
        return self._pending >= SAVE_EVERY or (
            self._pending > 0 and time.monotonic() - self._first_pending >= SAVE_AFTER_S
        )

    def capture(self, graph: GalleryNeighborGraph) -> Captured:
        """What a save writes, copied now (call under the owner's read or write lock): the graph's
        state, its descriptor digests and how many pending changes it includes."""
        state = graph.export_state()
        checks = np.fromiter((self._checks[i] for i in state.ids.tolist()), dtype=np.uint64, count=len(state.ids))
        return state, checks, self._pending

    def save_now(self, graph: GalleryNeighborGraph) -> None:
        """Write ``graph`` now (the caller holds the owner's lock or owns the graph alone)."""
        self._save(*self.capture(graph))

    def _save(self, state: GraphState, checks: np.ndarray, covered: int) -> None:
        """Write ``state``, which includes ``covered`` of the pending changes."""
        with self._save_lock:
            self.store.put_blob(self.name, encode(state, checks, self.fingerprint))
            self.saves += 1
        with self._cond:
            self._pending = max(0, self._pending - covered)
            if self._pending:
                self._first_pending = time.monotonic()

    def close(self, flush: Snapshot | None = None, wait: bool = True) -> None:
        """Stop the saver (``wait``: until its current save is done); with ``flush``, then write
        the changes it has not saved."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if wait and self._thread is not None:
            self._thread.join(timeout=60.0)
        captured = flush(self) if flush is not None and self._pending else None
        if captured is not None:
            try:
                self._save(*captured)
            except StoreError as exc:  # the next start catches up instead
                log.warning("re-ranking graph not saved at close (the next start catches up): %s", exc)


__all__ = ["DurableGraph", "GraphLoad", "blob_name", "decode", "descriptor_checks", "encode"]
