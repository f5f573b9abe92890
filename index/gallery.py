"""The gallery: a vector index, a metadata table and an optional re-ranking graph, searched by
cosine and ranked by identity.

Descriptors are unit vectors, so inner product is cosine similarity. Every tracklet is known by
the stable int64 id its store assigned (``Record.int_id``), so the index can be rebuilt from the
store with the same ids. Next to the vector index (any kind of ``index.vector_index.INDEX_KINDS``)
the gallery keeps a small metadata table per id (tracklet id, identity, camera, platform, session,
creation time) for filtering and for aggregating tracklet scores into identity scores.

Search (see ``Gallery.search``): the index returns a candidate pool, filters are applied to it (by
the index itself when it ``filters``), and if too few candidates survive (a selective filter, or an
approximate index that returned fewer than asked) the search falls back to an exact scan of the
whole filtered subset, so a filter never silently returns fewer results than exist. Final tracklet
scores are always exact cosines recomputed from the stored vectors, so all kinds report the same
numbers for the same items. Ties are broken by int id (lower first).

Re-ranking (optional, ``RerankParams``): the pool's tracklets are re-scored with k-reciprocal
re-ranking against a gallery neighbour graph (``index.neighbor_graph.GalleryNeighborGraph``) kept
in step with the index; a tracklet's ``score`` is then ``1 - rerank_distance`` (``cosine`` keeps
the raw similarity) and identities are aggregated over the re-ranked pool only. A gallery loaded
from a store (``rebuild_from``, ``reconcile``, ``from_state`` with a store) keeps its graph there
too (``index.graph_store``): it is loaded and caught up at the next start instead of rebuilt.

A ``Gallery`` is safe to share between threads: searches run concurrently under a read lock,
updates take the write lock.

Several processes (API replicas) may share one store and, with a ``durable`` index (Milvus), one
vector index; each keeps its own metadata table and neighbour graph and learns the others' writes
from the store's change feed (``apply_changes``). Until it has, a shared index can return ids this
gallery does not know yet, or lack ids it still lists: searches skip both, so a replica answers
from the state it has applied, never with an error.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from index.graph_store import Captured, DurableGraph, GraphLoad
from index.neighbor_graph import GalleryNeighborGraph
from index.ranking import group_by_identity, rank_identities, sort_hits
from index.rerank import RerankParams
from index.rwlock import ReadWriteLock
from index.store import Change, DimensionMismatch, Record
from index.types import (
    AGGREGATES,
    Aggregate,
    GalleryEntry,
    IdentityHit,
    IndexOptions,
    SearchFilter,
    SearchResult,
    TrackletHit,
    check_descriptors,
)
from index.vector_index import SnapshotIndex, VectorIndex, index_class, make_index

if TYPE_CHECKING:
    from index.store import Store

def id_digest(ids: np.ndarray) -> tuple[int, str]:
    """(count, SHA-256 over the sorted int64 ids) of a set of ids [n]."""
    sorted_ids = np.sort(np.asarray(ids, dtype=np.int64))
    return len(sorted_ids), hashlib.sha256(sorted_ids.astype("<i8").tobytes()).hexdigest()


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """Consecutive lists of at most ``size`` records."""
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# The stages of ``Gallery.search``, in the order they run (keys of its ``timings``).
SEARCH_STAGES = ("index", "pool", "rerank", "aggregate")


@contextmanager
def span(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Add the block's wall time in ms to ``timings[stage]`` (``timings`` None: time nothing).

    Added, not set: a stage entered twice reports its total."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1e3


# Reconstruct/score vectors in chunks so an exhaustive scan never copies the whole gallery at once.
_SCAN_CHUNK = 16384


@dataclass
class GalleryState:
    """Everything needed to recreate a gallery without re-adding vectors (used by snapshots):
    ``index`` is the vector index's own serialised form (``SnapshotIndex.export``)."""

    dim: int
    kind: str
    options: IndexOptions
    index: bytes
    trained: bool
    entries: list[GalleryEntry]


class Gallery:
    """Vector index + metadata table (+ optional re-ranking graph) over one descriptor dimension.

    ``kind`` names the vector index (``index.vector_index.index_kinds()``); ``index_params`` are
    that kind's own parameters (e.g. ``uri`` for milvus); ``use_gpu`` None lets the kind choose.
    ``index`` adopts an existing index (a restored snapshot, an opened durable index) instead.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        use_gpu: bool | None = None,
        graph_k: int | None = 30,
        options: IndexOptions | None = None,
        index_params: dict[str, Any] | None = None,
        index: VectorIndex | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if index is None:
            index_class(kind)  # names the valid kinds for an unknown one
        elif index.kind != kind or index.dim != dim:
            raise ValueError(f"index is kind={index.kind} dim={index.dim}, asked for kind={kind} dim={dim}")
        if graph_k is not None and (isinstance(graph_k, bool) or not isinstance(graph_k, int) or graph_k < 1):
            raise ValueError(f"graph_k must be None or an int >= 1, got {graph_k!r}")
        self.dim = dim
        self.kind = kind
        self.options = options if options is not None else IndexOptions()
        self.graph_k = graph_k
        self._index: VectorIndex = (
            index
            if index is not None
            else make_index(kind, dim, self.options, use_gpu=use_gpu, **(index_params or {}))
        )
        self.use_gpu = bool(getattr(self._index, "use_gpu", False))
        # Searches (re-ranking included) share the read lock: GalleryNeighborGraph.rerank only reads
        # the graph, and its contract allows concurrent calls. A lock of its own made every
        # re-ranked query wait behind the others' re-ranking (issue 12).
        self._lock = ReadWriteLock()
        self._durable_graph: DurableGraph | None = None
        self._reset(clear_index=False)

    def _reset(self, clear_index: bool = True) -> None:
        if clear_index:
            self._index.clear()
        self._entries: dict[int, GalleryEntry] = {}
        self._by_tracklet: dict[str, int] = {}
        self._by_identity: dict[str, set[int]] = {}
        self._graph: GalleryNeighborGraph | None = None
        if self.graph_k is not None:
            self._graph = GalleryNeighborGraph(self.dim, k=self.graph_k)
        if self._durable_graph is not None:
            # Its graph is being replaced: nothing of it is worth saving any more. No join: its
            # saver may be waiting for the lock this caller holds (it then finds itself retired).
            self._durable_graph.close(wait=False)
            self._durable_graph = None

    def _graph_add(self, ids: np.ndarray, feats: np.ndarray) -> None:
        """Add to the re-ranking graph (under the write lock), noting it for the stored copy."""
        if self._graph is not None:
            self._graph.add(ids, feats)
            if self._durable_graph is not None:
                self._durable_graph.added(ids, feats)

    def _graph_remove(self, ids: np.ndarray) -> None:
        if self._graph is not None:
            self._graph.remove(ids)
            if self._durable_graph is not None:
                self._durable_graph.removed(ids)

    def _keep_graph_in(self, store: Store, ids: np.ndarray, feats: np.ndarray) -> None:
        """Take the graph over ``ids`` / ``feats`` from ``store`` (caught up, or rebuilt and saved
        there) and keep saving it there (under the write lock, the metadata already loaded)."""
        if self.graph_k is None:
            return
        durable = DurableGraph(store, self.dim, self.graph_k, store.info().fingerprint)
        self._graph = durable.restore(ids, feats)
        durable.watch(self._capture_graph)
        self._durable_graph = durable

    def _capture_graph(self, durable: DurableGraph) -> Captured | None:
        """``durable``'s save of the current graph, or None once ``durable`` was replaced."""
        with self._lock.read():
            if durable is not self._durable_graph or self._graph is None:
                return None
            return durable.capture(self._graph)

    @property
    def graph_load(self) -> GraphLoad | None:
        """How the re-ranking graph was obtained at the last load from a store (None: not loaded)."""
        return None if self._durable_graph is None else self._durable_graph.last_load

    @property
    def durable_graph(self) -> DurableGraph | None:
        """The stored copy of the re-ranking graph this gallery keeps up to date, if any."""
        return self._durable_graph

    def _load_records(self, store: Store, batch: int, index: bool, keep_graph: bool = True) -> None:
        """Fill the metadata table (and, with ``index``, the vector index) from ``store``, then the
        graph: from its stored copy with ``keep_graph``, else built here and kept nowhere (under
        the write lock, after ``_reset``)."""
        ids: list[np.ndarray] = []
        feats: list[np.ndarray] = []
        for records in _batches(store.iter_records(batch=batch), batch):
            entries = [GalleryEntry.from_record(r) for r in records]
            x = check_descriptors(np.stack([r.descriptor for r in records]), self.dim, "stored descriptors")
            if index:
                self._index.add(entries, x)
            self._note(entries)
            if self.graph_k is not None:
                ids.append(np.array([e.int_id for e in entries], dtype=np.int64))
                feats.append(x)
        if self.graph_k is not None and not keep_graph:
            assert self._graph is not None
            for part_ids, part in zip(ids, feats, strict=True):
                self._graph.add(part_ids, part)
        elif self.graph_k is not None:
            self._keep_graph_in(
                store,
                np.concatenate(ids) if ids else np.empty(0, dtype=np.int64),
                np.concatenate(feats) if feats else np.empty((0, self.dim), dtype=np.float32),
            )

    def _note(self, entries: Iterable[GalleryEntry]) -> None:
        """Add entries to the metadata table (their vectors are indexed already)."""
        for e in entries:
            self._entries[int(e.int_id)] = e
            self._by_tracklet[e.tracklet_id] = int(e.int_id)
            self._by_identity.setdefault(e.identity, set()).add(int(e.int_id))

    def _forget(self, ids: Iterable[int]) -> None:
        for i in ids:
            e = self._entries.pop(i)
            del self._by_tracklet[e.tracklet_id]
            members = self._by_identity[e.identity]
            members.discard(i)
            if not members:
                del self._by_identity[e.identity]

    @property
    def durable(self) -> bool:
        """The vector index outlives the process (reconcile with the store at start, no rebuild)."""
        return self._index.durable

    def close(self) -> None:
        """Save the re-ranking graph's unsaved changes to its store, release the vector index's
        connections (a durable index keeps its contents)."""
        if self._durable_graph is not None:
            self._durable_graph.close(flush=self._capture_graph)
        self._index.close()

    # ---- contents ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, int_id: object) -> bool:
        return int_id in self._entries

    @property
    def trained(self) -> bool:
        """False only for an IVF gallery still waiting for enough vectors to train."""
        return self._index.trained

    def entry(self, int_id: int) -> GalleryEntry | None:
        return self._entries.get(int_id)

    def int_id_of(self, tracklet_id: str) -> int | None:
        return self._by_tracklet.get(tracklet_id)

    def int_ids(self) -> np.ndarray:
        with self._lock.read():
            return np.array(sorted(self._entries), dtype=np.int64)

    def identities(self) -> dict[str, int]:
        """Identity -> number of indexed tracklets."""
        with self._lock.read():
            return {name: len(ids) for name, ids in self._by_identity.items()}

    def vectors(self, int_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The indexed descriptors of ``int_ids`` (float32 [n, dim])."""
        ids = np.asarray(int_ids, dtype=np.int64).reshape(-1)
        with self._lock.read():
            missing = [int(i) for i in ids if int(i) not in self._entries]
            if missing:
                raise KeyError(f"int ids not in the gallery: {missing[:5]}")
            return self._vectors(ids)

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._index.vectors(ids), dtype=np.float32)

    def _live(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, their descriptors) for scoring search candidates. A shared index may already have
        dropped an id that another process deleted and this gallery has not heard of yet: such ids
        are left out (the change feed removes them here shortly) instead of failing the search."""
        if len(ids) == 0 or not self._index.durable:
            return ids, self._vectors(ids)
        found, vecs = self._index.lookup(ids)
        return found, np.ascontiguousarray(vecs, dtype=np.float32)

    # ---- updates ----------------------------------------------------------------------------
    def add(self, entries: Sequence[GalleryEntry], feats: np.ndarray) -> None:
        """Index ``entries`` with their descriptors ``feats`` (float32 [n, dim], unit rows).

        Raises ``ValueError`` (naming the row or id) for malformed input or ids already indexed;
        nothing is added then.
        """
        entries = list(entries)
        x = check_descriptors(feats, self.dim, "feats")
        if x.shape[0] != len(entries):
            raise ValueError(f"feats has {x.shape[0]} rows for {len(entries)} entries")
        if not entries:
            return
        ids = np.empty(len(entries), dtype=np.int64)
        seen_ids: set[int] = set()
        seen_tracklets: set[str] = set()
        with self._lock.write():
            for i, e in enumerate(entries):
                if not isinstance(e, GalleryEntry):
                    raise ValueError(f"entries[{i}] must be a GalleryEntry, got {type(e).__name__}")
                if isinstance(e.int_id, bool) or not isinstance(e.int_id, (int, np.integer)) or e.int_id < 0:
                    raise ValueError(f"entries[{i}].int_id must be an int >= 0, got {e.int_id!r}")
                if e.int_id in self._entries or e.int_id in seen_ids:
                    raise ValueError(f"int id {e.int_id} is already in the gallery")
                if e.tracklet_id in self._by_tracklet or e.tracklet_id in seen_tracklets:
                    raise ValueError(f"tracklet {e.tracklet_id!r} is already in the gallery")
                seen_ids.add(int(e.int_id))
                seen_tracklets.add(e.tracklet_id)
                ids[i] = e.int_id
            self._index.add(entries, x)
            self._graph_add(ids, x)
            self._note(entries)

    def add_records(self, records: Iterable[Record]) -> None:
        """Index stored records (they carry their int ids and descriptors)."""
        records = list(records)
        if records:
            self.add(
                [GalleryEntry.from_record(r) for r in records],
                np.stack([r.descriptor for r in records]).astype(np.float32, copy=False),
            )

    def remove(self, int_ids: Iterable[int] | np.ndarray) -> int:
        """Remove these ids (unknown ids are ignored); returns how many were removed."""
        with self._lock.write():
            requested = np.asarray(
                int_ids if isinstance(int_ids, np.ndarray) else list(int_ids), dtype=np.int64
            )
            ids = np.array(
                sorted({i for i in requested.reshape(-1).tolist() if i in self._entries}), dtype=np.int64
            )
            if len(ids) == 0:
                return 0
            self._index.remove(ids)
            self._graph_remove(ids)
            self._forget(ids.tolist())
            return len(ids)

    def remove_tracklets(self, tracklet_ids: Iterable[str]) -> int:
        with self._lock.write():
            return self.remove([self._by_tracklet[t] for t in tracklet_ids if t in self._by_tracklet])

    def apply_changes(self, store: Store, changes: Sequence[Change]) -> tuple[int, int]:
        """Apply changes read from ``store``'s feed (``Store.changes_since``), in order; returns
        (added, removed) to this gallery's metadata.

        Idempotent, because a replica also reads its own writes and the changes already reflected
        in what it loaded at start: an ``add`` is skipped when its id is in the gallery, or when the
        store no longer holds the record under that int id (deleted, perhaps re-enrolled under a
        new one: a later change says so); a ``remove`` of an id the gallery lacks changes nothing
        here. A local index (FAISS) is updated with the metadata and graph. A shared ``durable``
        index is only written where it disagrees: a missing added vector is upserted, a removed
        one still present is deleted. That heals a writer that died between its store write and
        its index write, and costs a lookup, not a write, when the writer finished.
        """
        added = removed = 0
        with self._lock.write():
            start = 0
            while start < len(changes):
                # Consecutive changes of one kind are applied together (one index call per run).
                end = start
                while end < len(changes) and changes[end].op == changes[start].op:
                    end += 1
                run = changes[start:end]
                if run[0].op == "add":
                    added += self._apply_adds(store, run)
                elif run[0].op == "remove":
                    removed += self._apply_removes(run)
                else:
                    raise ValueError(f"unknown change op {run[0].op!r} (seq {run[0].seq})")
                start = end
        return added, removed

    def _apply_adds(self, store: Store, run: Sequence[Change]) -> int:
        records: list[Record] = []
        seen: set[int] = set()
        for change in run:
            if change.int_id in self._entries or change.int_id in seen:
                continue
            record = store.get(change.tracklet_id)
            if record is None or record.int_id != change.int_id or record.tracklet_id in self._by_tracklet:
                continue
            if record.dim != self.dim:
                # The store was re-embedded under this gallery: its records are not for this model.
                raise DimensionMismatch(self.dim, record.dim, f"stored descriptor of {record.tracklet_id!r}")
            seen.add(change.int_id)
            records.append(record)
        if not records:
            return 0
        if not self._index.durable:
            self.add_records(records)
            return len(records)
        entries = [GalleryEntry.from_record(r) for r in records]
        x = check_descriptors(np.stack([r.descriptor for r in records]), self.dim, "stored descriptors")
        ids = np.array([e.int_id for e in entries], dtype=np.int64)
        present = set(self._index.lookup(ids)[0].tolist())
        todo = [i for i, int_id in enumerate(ids.tolist()) if int_id not in present]
        if todo:
            self._index.add([entries[i] for i in todo], x[todo])
        self._graph_add(ids, x)
        self._note(entries)
        return len(records)

    def _apply_removes(self, run: Sequence[Change]) -> int:
        ids = np.unique(np.array([c.int_id for c in run], dtype=np.int64))
        known = np.array([i for i in ids.tolist() if i in self._entries], dtype=np.int64)
        if not self._index.durable:
            return self.remove(known)
        stale = self._index.lookup(ids)[0]
        if len(stale):
            self._index.remove(stale)
        if len(known):
            self._graph_remove(known)
            self._forget(known.tolist())
        return len(known)

    def rebuild_from(self, store: Store, batch: int = 1000, keep_graph: bool = True) -> None:
        """Replace the contents with every record of ``store`` (same int ids). With ``keep_graph``
        the re-ranking graph comes from its copy in the store (``graph_load`` says how) and is kept
        there from now on; without, it is built from the records here and stored nowhere.

        Raises ``DimensionMismatch`` when the store's descriptors have another dimension.
        """
        info = store.info()
        if info.dim is not None and info.dim != self.dim:
            raise DimensionMismatch(info.dim, self.dim, "the gallery index")
        with self._lock.write():
            self._reset()
            self._load_records(store, batch, index=True, keep_graph=keep_graph)

    def reconcile(self, store: Store, batch: int = 1000) -> tuple[int, int]:
        """Make a durable index agree with ``store`` without re-adding what it already holds.

        The metadata table is loaded from the store, the neighbour graph from its copy there
        (``graph_load``); the index's ids are then
        compared with the store's by count and a SHA-256 over the sorted ids. When they differ (a
        crash between the store write and the index write, either way), the store's missing records
        are upserted and ids the store no longer has are removed. Returns (added, removed).
        A non-durable index is simply rebuilt (``rebuild_from``); then (len, 0) is returned.
        """
        if not self._index.durable:
            self.rebuild_from(store, batch=batch)
            return len(self), 0
        info = store.info()
        if info.dim is not None and info.dim != self.dim:
            raise DimensionMismatch(info.dim, self.dim, "the gallery index")
        with self._lock.write():
            self._reset(clear_index=False)
            self._load_records(store, batch, index=False)
            stored = np.fromiter(self._entries, dtype=np.int64, count=len(self._entries))
            indexed = self._index.ids()
            if id_digest(indexed) == id_digest(stored):
                return 0, 0
            extra = np.setdiff1d(indexed, stored)
            missing = set(np.setdiff1d(stored, indexed).tolist())
            if len(extra):
                self._index.remove(extra)
            added = 0
            if missing:
                for records in _batches(
                    (r for r in store.iter_records(batch=batch) if r.int_id in missing), batch
                ):
                    entries = [GalleryEntry.from_record(r) for r in records]
                    self._index.add(entries, check_descriptors(np.stack([r.descriptor for r in records]), self.dim, "descriptors"))
                    added += len(records)
            return added, len(extra)

    @classmethod
    def from_store(
        cls,
        store: Store,
        dim: int | None = None,
        kind: str = "flat",
        use_gpu: bool | None = None,
        graph_k: int | None = 30,
        options: IndexOptions | None = None,
        keep_graph: bool = True,
    ) -> Gallery:
        """A new gallery holding every record of ``store``; ``dim`` defaults to the store's.
        ``keep_graph`` as for ``rebuild_from``."""
        store_dim = store.info().dim
        if dim is None:
            if store_dim is None:
                raise ValueError("the store is empty and fixes no dimension: pass dim")
            dim = store_dim
        gallery = cls(dim, kind=kind, use_gpu=use_gpu, graph_k=graph_k, options=options)
        gallery.rebuild_from(store, keep_graph=keep_graph)
        return gallery

    # ---- snapshots --------------------------------------------------------------------------
    def export_state(self) -> GalleryState:
        """The serialised index and metadata table (HNSW tombstones are compacted first).

        Raises ``ValueError`` for an index kind that keeps its own state (no snapshots)."""
        if not isinstance(self._index, SnapshotIndex):
            raise ValueError(f"index kind {self.kind!r} keeps its own state: it has no snapshots")
        with self._lock.write():
            data, trained = self._index.export()
            return GalleryState(
                dim=self.dim,
                kind=self.kind,
                options=self.options,
                index=data,
                trained=trained,
                entries=[self._entries[i] for i in sorted(self._entries)],
            )

    @classmethod
    def from_state(
        cls,
        state: GalleryState,
        use_gpu: bool | None = None,
        graph_k: int | None = 30,
        store: Store | None = None,
    ) -> Gallery:
        """Recreate a gallery from ``export_state`` output; raises ``ValueError`` if they disagree.
        With ``store`` (the one the state was taken from), the graph comes from its copy there."""
        kind_class = index_class(state.kind)
        if not issubclass(kind_class, SnapshotIndex):
            raise ValueError(f"index kind {state.kind!r} has no snapshots")
        index = kind_class.restore(state.dim, state.options, state.index, state.trained, use_gpu=use_gpu)
        if len(index) != len(state.entries):
            raise ValueError(f"snapshot index holds {len(index)} vectors for {len(state.entries)} entries")
        ids = np.array([e.int_id for e in state.entries], dtype=np.int64)
        if not np.array_equal(np.sort(index.ids()), np.sort(ids)):
            raise ValueError("snapshot index ids differ from its entry table")
        gallery = cls(state.dim, kind=state.kind, graph_k=graph_k, options=state.options, index=index)
        with gallery._lock.write():
            gallery._note(state.entries)
            if len(gallery._by_tracklet) != len(state.entries):
                raise ValueError("snapshot entry table repeats a tracklet id")
            if gallery._graph is not None:
                if store is not None:
                    gallery._keep_graph_in(store, ids, gallery._vectors(ids))
                else:
                    for start in range(0, len(ids), _SCAN_CHUNK):
                        chunk = ids[start : start + _SCAN_CHUNK]
                        gallery._graph.add(chunk, gallery._vectors(chunk))
        return gallery

    # ---- search -----------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        top_k: int = 10,
        filters: SearchFilter | None = None,
        rerank: RerankParams | None = None,
        aggregate: Aggregate = "max",
        candidates: int = 200,
        timings: dict[str, float] | None = None,
    ) -> SearchResult:
        """Rank gallery identities for one unit-norm query descriptor [dim].

        ``candidates`` is the minimum number of tracklets taken from the index (after filtering);
        the pool grows until it also spans ``top_k`` identities or holds every admissible item.
        Identity score = max (default) or mean of its tracklet scores. Without re-ranking each
        listed identity carries all of its admissible tracklets, and ``mean`` averages over all of
        them; identities are those appearing in the pool (an identity with no tracklet in the pool
        has a lower max than every pooled one, but with ``mean`` it is not considered). With
        re-ranking, aggregation uses the re-ranked pool only.

        ``timings``, when given, receives the wall time in ms of each stage that ran
        (``SEARCH_STAGES``): ``index`` the vector index search (its pool growth and the exact
        fallback scan included), ``pool`` the candidates' stored vectors and exact cosines,
        ``rerank`` the graph re-ranking, ``aggregate`` tracklet hits and identity ranking. A search
        that stops early (empty gallery or pool) reports the stages it reached.
        """
        q = check_descriptors(query, self.dim, "query", single=True)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if filters is not None and not isinstance(filters, SearchFilter):
            raise ValueError(f"filters must be a SearchFilter or None, got {type(filters).__name__}")
        if rerank is not None:
            if self._graph is None:
                raise ValueError(
                    "re-ranking needs the neighbour graph, but this gallery was built with graph_k=None"
                )
            assert self.graph_k is not None
            if rerank.k1 > self.graph_k:
                raise ValueError(f"RerankParams.k1={rerank.k1} exceeds the gallery graph's k={self.graph_k}")
        filt = filters if filters is not None and filters.active else None

        with self._lock.read():
            if not self._entries:
                return SearchResult([], [], aggregate, rerank is not None, True)
            with span(timings, "index"):
                pool, exhaustive = self._pool(q, filt, candidates, top_k)
            with span(timings, "pool"):
                pool, pool_vectors = self._live(pool)
                cos = pool_vectors @ q
            if len(pool) == 0:
                return SearchResult([], [], aggregate, rerank is not None, exhaustive)
            if rerank is not None:
                with span(timings, "rerank"):
                    dist = self._rerank(q, pool, rerank)
                with span(timings, "aggregate"):
                    hits = [
                        self._hit(i, c, 1.0 - d, d)
                        for i, c, d in zip(pool.tolist(), cos.tolist(), dist.tolist(), strict=True)
                    ]
                    ranked_hits = sort_hits(hits)
                    identities = self._aggregate_pool(ranked_hits, top_k, aggregate)
            else:
                with span(timings, "aggregate"):
                    hits = [self._hit(i, c, c, None) for i, c in zip(pool.tolist(), cos.tolist(), strict=True)]
                    ranked_hits = sort_hits(hits)
                    identities = self._aggregate_complete(q, ranked_hits, filt, top_k, aggregate)
            return SearchResult(identities, ranked_hits, aggregate, rerank is not None, exhaustive)

    def _rerank(self, q: np.ndarray, pool: np.ndarray, rerank: RerankParams) -> np.ndarray:
        """Re-ranked distances float32 [len(pool)] of the query to its pool (under the read lock,
        alongside other searches: the graph only changes under the write lock)."""
        assert self._graph is not None
        dist = np.asarray(
            self._graph.rerank(q, pool, k1=rerank.k1, k2=rerank.k2, lambda_value=rerank.lambda_value),
            dtype=np.float32,
        )
        if dist.shape != (len(pool),):
            raise RuntimeError(f"re-ranking returned shape {dist.shape} for {len(pool)} candidates")
        return dist

    def _hit(self, int_id: int, cosine: float, score: float, distance: float | None) -> TrackletHit:
        e = self._entries[int_id]
        return TrackletHit(
            int_id=int_id,
            tracklet_id=e.tracklet_id,
            identity=e.identity,
            camera=e.camera,
            platform=e.platform,
            session=e.session,
            cosine=cosine,
            score=score,
            rerank_distance=distance,
        )

    def _enough_prefix(self, ranked: np.ndarray, want: int, want_identities: int) -> int | None:
        """Shortest prefix holding ``want`` items and ``want_identities`` identities, or None."""
        if len(ranked) < want:
            return None
        seen: set[str] = set()
        for pos, i in enumerate(ranked.tolist()):
            seen.add(self._entries[i].identity)
            if len(seen) >= want_identities:
                return max(want, pos + 1)
        return None

    def _admissible(self, filt: SearchFilter | None) -> np.ndarray:
        if filt is None:
            return np.fromiter(self._entries, dtype=np.int64, count=len(self._entries))
        return np.array([i for i, e in self._entries.items() if filt.matches(e)], dtype=np.int64)

    def _pool(
        self, q: np.ndarray, filt: SearchFilter | None, want: int, want_identities: int
    ) -> tuple[np.ndarray, bool]:
        n = len(self._entries)
        # An index that filters returns admissible items only: no need to over-fetch for the filter.
        native = filt is not None and self._index.filters
        expand = self.options.filter_expansion if filt is not None and not native else 1
        k = min(n, max(want, want_identities) * expand)
        q2 = q.reshape(1, -1)
        # An exact index may grow the pool up to the whole gallery (its cost barely depends on k);
        # an approximate one grows once, then the exact scan below is cheaper than a huge
        # efSearch / nprobe and is guaranteed complete.
        growths_left = n if self._index.exact else 1
        while True:
            if native:
                ids = self._index.search(q2, k, filt)
            else:
                ids = self._index.search(q2, k)
            if self._index.durable:
                # A shared index may hold ids another process added that this gallery has not
                # applied yet (no metadata here): leave them out until it has.
                ids = np.array([i for i in ids.tolist() if i in self._entries], dtype=np.int64)
            if filt is not None and not native:
                ids = np.array([i for i in ids.tolist() if filt.matches(self._entries[i])], dtype=np.int64)
            cut = self._enough_prefix(ids, want, want_identities)
            if cut is not None:
                return ids[:cut], self._index.exact
            if k >= n or growths_left == 0:
                break
            growths_left -= 1
            k = min(n, k * 4)
        # Too few survived: a selective filter or an approximate index that returned fewer than
        # asked. Scan the whole admissible subset exactly so nothing that exists is left out.
        subset = self._admissible(filt)
        if self._index.exact and len(ids) == len(subset):
            return ids, True
        kept: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
        parts: list[np.ndarray] = [np.empty(0, dtype=np.float32)]
        for s in range(0, len(subset), _SCAN_CHUNK):
            chunk, vecs = self._live(subset[s : s + _SCAN_CHUNK])
            kept.append(chunk)
            parts.append(vecs @ q)
        subset, scores = np.concatenate(kept), np.concatenate(parts)
        ranked = subset[np.lexsort((subset, -scores))]
        cut = self._enough_prefix(ranked, want, want_identities)
        return ranked[: cut if cut is not None else len(ranked)], True

    def _aggregate_pool(self, ranked: list[TrackletHit], top_k: int, aggregate: str) -> list[IdentityHit]:
        return rank_identities(group_by_identity(ranked), top_k, aggregate)

    def _aggregate_complete(
        self, q: np.ndarray, ranked: list[TrackletHit], filt: SearchFilter | None, top_k: int, aggregate: str
    ) -> list[IdentityHit]:
        order: list[str] = []
        for h in ranked:
            if h.identity not in order:
                order.append(h.identity)
        if aggregate == "max":
            # Pool hits are sorted, so first appearance order is the max-score identity ranking.
            order = order[:top_k]
        known = {h.int_id: h for h in ranked}
        groups: dict[str, list[TrackletHit]] = {}
        missing: list[int] = []
        for name in order:
            for i in self._by_identity[name]:
                if i not in known and (filt is None or filt.matches(self._entries[i])):
                    missing.append(i)
        extra, extra_vectors = self._live(np.array(sorted(missing), dtype=np.int64))
        if len(extra):
            for i, c in zip(extra.tolist(), (extra_vectors @ q).tolist(), strict=True):
                known[i] = self._hit(i, float(c), float(c), None)
        wanted = set(order)
        for h in sort_hits(list(known.values())):
            if h.identity in wanted:
                groups.setdefault(h.identity, []).append(h)
        return rank_identities(groups, top_k, aggregate)


__all__ = ["SEARCH_STAGES", "Gallery", "GalleryState", "span"]
