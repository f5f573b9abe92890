"""FAISS gallery of L2-normalised tracklet descriptors, searched by cosine and ranked by identity.

Descriptors are unit vectors, so inner product is cosine similarity. Every tracklet is known by
the stable int64 id its store assigned (``Record.int_id``), so the index can be rebuilt from the
store with the same ids. Next to FAISS the gallery keeps a small metadata table per id
(tracklet id, identity, camera, platform, session) for filtering and for aggregating tracklet
scores into identity scores.

Index kinds:

* ``flat`` (default): exact search, ``IndexIDMap2(IndexFlatIP)``. When faiss has GPU support and
  sees a GPU (``use_gpu=None`` means auto), searches run on a ``GpuIndexFlatIP`` mirror of the CPU
  index; the CPU index stays the master because it supports ``remove_ids`` and ``reconstruct``;
  the mirror is appended to on add and rebuilt lazily after a remove.
* ``ivf``: ``IndexIVFFlat`` (spherical k-means, ``nlist`` lists, ``nprobe`` probed). It is trained
  once ``IndexOptions.min_train`` vectors exist; before that, vectors wait in an exact flat index
  and searches are exact. The centroids are not retrained as the gallery grows: rebuild the
  gallery (``rebuild_from``) after it has grown a lot.
* ``hnsw``: ``IndexHNSWFlat`` inside ``IndexIDMap2``. HNSW cannot delete, so removals are
  tombstones that searches skip; once tombstones exceed ``tombstone_ratio`` of the index it is
  rebuilt from the live vectors.

Search (see ``Gallery.search``): FAISS returns a candidate pool, filters are applied to it, and if
too few candidates survive (a selective filter, or an approximate index that returned fewer than
asked) the search falls back to an exact scan of the whole filtered subset, so a filter never
silently returns fewer results than exist. Final tracklet scores are always exact cosines
recomputed from the stored vectors, so all kinds report the same numbers for the same items.
Ties are broken by int id (lower first).

Re-ranking (optional, ``RerankParams``): the pool's tracklets are re-scored with k-reciprocal
re-ranking against a gallery neighbour graph (``index.rerank.GalleryNeighborGraph``) kept in step
with the index; a tracklet's ``score`` is then ``1 - rerank_distance`` (``cosine`` keeps the raw
similarity) and identities are aggregated over the re-ranked pool only.

A ``Gallery`` is safe to share between threads: searches run concurrently under a read lock,
updates take the write lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import faiss
import numpy as np

from index.rerank import RerankParams
from index.store import DimensionMismatch, Record

if TYPE_CHECKING:
    from index.rerank import GalleryNeighborGraph
    from index.store import Store

GalleryKind = Literal["flat", "ivf", "hnsw"]
Aggregate = Literal["max", "mean"]
KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
AGGREGATES: tuple[str, ...] = ("max", "mean")
# Descriptors are accepted as unit vectors when their norm is within this of 1.
NORM_TOLERANCE = 1e-3
# GPU flat search handles k up to this; larger pools are searched on the CPU master.
_GPU_MAX_K = 2048
# Reconstruct/score vectors in chunks so an exhaustive scan never copies the whole gallery at once.
_SCAN_CHUNK = 16384


@dataclass(frozen=True)
class IndexOptions:
    """Index parameters. ``train_size`` None means ``39 * nlist`` (faiss' minimum for k-means)."""

    nlist: int = 256
    nprobe: int = 16
    train_size: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    tombstone_ratio: float = 0.2
    filter_expansion: int = 10

    def __post_init__(self) -> None:
        for name in ("nlist", "nprobe", "ef_construction", "ef_search", "filter_expansion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IndexOptions.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.hnsw_m, bool) or not isinstance(self.hnsw_m, int) or self.hnsw_m < 2:
            raise ValueError(f"IndexOptions.hnsw_m must be an int >= 2, got {self.hnsw_m!r}")
        if self.train_size is not None and (
            isinstance(self.train_size, bool)
            or not isinstance(self.train_size, int)
            or self.train_size < self.nlist
        ):
            raise ValueError(
                f"IndexOptions.train_size must be None or an int >= nlist, got {self.train_size!r}"
            )
        if not (0.0 < self.tombstone_ratio <= 1.0):
            raise ValueError(f"IndexOptions.tombstone_ratio must be in (0, 1], got {self.tombstone_ratio!r}")

    @property
    def min_train(self) -> int:
        return self.train_size if self.train_size is not None else 39 * self.nlist


@dataclass(frozen=True)
class GalleryEntry:
    """Metadata kept in memory per indexed tracklet."""

    int_id: int
    tracklet_id: str
    identity: str
    camera: str | None = None
    platform: str | None = None
    session: str | None = None

    @classmethod
    def from_record(cls, record: Record) -> GalleryEntry:
        if record.int_id is None:
            raise ValueError(
                f"record {record.tracklet_id!r} has no int_id: only stored records can be indexed"
            )
        return cls(
            int_id=record.int_id,
            tracklet_id=record.tracklet_id,
            identity=record.identity,
            camera=record.camera,
            platform=record.platform,
            session=record.session,
        )


@dataclass(frozen=True)
class SearchFilter:
    """Which gallery tracklets a search may return; unset fields do not filter.

    ``camera``/``platform``/``session`` keep only equal values (an item without a camera does not
    match ``camera="c1"``); ``exclude_camera`` drops items from that camera (the
    "exclude same camera" rule for a query from that camera); ``exclude_identities`` drops identities.
    """

    platform: str | None = None
    camera: str | None = None
    session: str | None = None
    exclude_identities: frozenset[str] = field(default_factory=frozenset)
    exclude_camera: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.exclude_identities, str):
            raise ValueError("SearchFilter.exclude_identities must be a set of identities, not a string")
        object.__setattr__(self, "exclude_identities", frozenset(self.exclude_identities))
        if self.platform is not None and self.platform not in ("aerial", "ground"):
            raise ValueError(
                f"SearchFilter.platform must be 'aerial', 'ground' or None, got {self.platform!r}"
            )

    @property
    def active(self) -> bool:
        return bool(
            self.platform is not None
            or self.camera is not None
            or self.session is not None
            or self.exclude_identities
            or self.exclude_camera is not None
        )

    def matches(self, entry: GalleryEntry) -> bool:
        return (
            (self.platform is None or entry.platform == self.platform)
            and (self.camera is None or entry.camera == self.camera)
            and (self.session is None or entry.session == self.session)
            and (self.exclude_camera is None or entry.camera != self.exclude_camera)
            and entry.identity not in self.exclude_identities
        )


@dataclass(frozen=True)
class TrackletHit:
    """One gallery tracklet in a result. ``score`` orders results: the cosine, or
    ``1 - rerank_distance`` when re-ranked."""

    int_id: int
    tracklet_id: str
    identity: str
    camera: str | None
    platform: str | None
    session: str | None
    cosine: float
    score: float
    rerank_distance: float | None = None


@dataclass(frozen=True)
class IdentityHit:
    rank: int
    identity: str
    score: float
    tracklets: list[TrackletHit]


@dataclass(frozen=True)
class SearchResult:
    """``identities``: ranked identities (rank 1 first), each with its tracklets by score.
    ``tracklets``: the scored candidate pool, best first. ``exhaustive``: the candidates came from
    an exact search (exact index or the exact fallback scan)."""

    identities: list[IdentityHit]
    tracklets: list[TrackletHit]
    aggregate: str
    reranked: bool
    exhaustive: bool


@dataclass
class GalleryState:
    """Everything needed to recreate a gallery without re-adding vectors (used by snapshots)."""

    dim: int
    kind: str
    options: IndexOptions
    index: faiss.Index
    trained: bool
    entries: list[GalleryEntry]


class _ReadWriteLock:
    """Many readers at once, or one writer. The writer may re-enter and may read.

    Searches only read the index, and a single-query FAISS search uses one core, so letting
    searches overlap is what lets concurrent queries use the machine's cores. Waiting writers
    block new readers, so a stream of queries cannot starve an update.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            nested = self._writer == me
            if not nested:
                while self._writer is not None or self._waiting_writers:
                    self._cond.wait()
                self._readers += 1
        try:
            yield
        finally:
            if not nested:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._waiting_writers += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting_writers -= 1
                self._writer = me
                self._depth = 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._cond.notify_all()


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# ---- index backends ---------------------------------------------------------------------------
class _Backend(Protocol):
    exact: bool

    def add(self, ids: np.ndarray, x: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def search(self, q: np.ndarray, k: int) -> np.ndarray: ...
    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...
    def export(self) -> tuple[faiss.Index, bool]: ...


def _live_ids(idmap: faiss.IndexIDMap2) -> np.ndarray:
    return faiss.vector_to_array(idmap.id_map).astype(np.int64)


def _valid(ids: np.ndarray) -> np.ndarray:
    return ids[ids >= 0]


class _FlatBackend:
    exact = True

    def __init__(self, dim: int, use_gpu: bool, index: faiss.Index | None = None) -> None:
        self.cpu: faiss.IndexIDMap2 = (
            index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        )
        self._gpu_res = faiss.StandardGpuResources() if use_gpu else None
        self._gpu: faiss.Index | None = None
        self._gpu_ids = np.empty(0, dtype=np.int64)
        # Searches run concurrently (read lock) but GPU indexes are not thread-safe, and the
        # mirror is built lazily inside search.
        self._gpu_lock = threading.Lock()

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        self.cpu.add_with_ids(x, ids)
        if self._gpu is not None:
            # IndexIDMap2 appends to its inner flat index and id_map in the same order.
            self._gpu.add(x)
            self._gpu_ids = np.concatenate([self._gpu_ids, ids])

    def remove(self, ids: np.ndarray) -> None:
        self.cpu.remove_ids(faiss.IDSelectorArray(ids))
        self._gpu = None  # positions shifted: rebuild the mirror on the next search

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        if self._gpu_res is not None and k <= _GPU_MAX_K:
            with self._gpu_lock:
                if self._gpu is None:
                    inner = faiss.downcast_index(self.cpu.index)
                    self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, inner)
                    self._gpu_ids = _live_ids(self.cpu)
                _, pos = self._gpu.search(q, k)
                pos = pos[0]
                return self._gpu_ids[pos[pos >= 0]]
        _, ids = self.cpu.search(q, k)
        return _valid(ids[0])

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.cpu.reconstruct_batch(ids)

    def export(self) -> tuple[faiss.Index, bool]:
        return self.cpu, True


class _IVFBackend:
    def __init__(self, dim: int, options: IndexOptions, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.options = options
        self.ivf: faiss.IndexIVFFlat | None = None
        self.pending: faiss.IndexIDMap2 | None = None
        if isinstance(index, faiss.IndexIVFFlat):
            self.ivf = index
        else:
            self.pending = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.ivf is None

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if self.ivf is not None:
            self.ivf.add_with_ids(x, ids)
            return
        assert self.pending is not None
        self.pending.add_with_ids(x, ids)
        if self.pending.ntotal >= self.options.min_train:
            self._train()

    def _train(self) -> None:
        assert self.pending is not None
        ids = _live_ids(self.pending)
        x = self.pending.reconstruct_batch(ids)
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, self.options.nlist, faiss.METRIC_INNER_PRODUCT)
        # Unit vectors: spherical k-means keeps centroids on the sphere, matching the IP metric.
        ivf.cp.spherical = True
        ivf.train(x)
        # A hashtable direct map allows both reconstruct() and remove_ids() by id.
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.add_with_ids(x, ids)
        self.ivf = ivf
        self.pending = None

    def remove(self, ids: np.ndarray) -> None:
        if self.ivf is not None:
            self.ivf.remove_ids(faiss.IDSelectorArray(ids))
        else:
            assert self.pending is not None
            self.pending.remove_ids(faiss.IDSelectorArray(ids))

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        if self.ivf is None:
            assert self.pending is not None
            _, ids = self.pending.search(q, k)
        else:
            params = faiss.SearchParametersIVF(nprobe=min(self.options.nprobe, self.ivf.nlist))
            _, ids = self.ivf.search(q, k, params=params)
        return _valid(ids[0])

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        index = self.ivf if self.ivf is not None else self.pending
        assert index is not None
        return index.reconstruct_batch(ids)

    def export(self) -> tuple[faiss.Index, bool]:
        if self.ivf is not None:
            return self.ivf, True
        assert self.pending is not None
        return self.pending, False


class _HNSWBackend:
    exact = False

    def __init__(self, dim: int, options: IndexOptions, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.options = options
        self.index: faiss.IndexIDMap2 = index if index is not None else self._new()
        self.tombstones: set[int] = set()

    def _new(self) -> faiss.IndexIDMap2:
        hnsw = faiss.IndexHNSWFlat(self.dim, self.options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.options.ef_construction
        return faiss.IndexIDMap2(hnsw)

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if self.tombstones and not self.tombstones.isdisjoint(ids.tolist()):
            # A tombstoned id still sits in the graph; re-adding it would duplicate it.
            self.compact()
        self.index.add_with_ids(x, ids)

    def remove(self, ids: np.ndarray) -> None:
        self.tombstones.update(int(i) for i in ids)
        if len(self.tombstones) > self.options.tombstone_ratio * self.index.ntotal:
            self.compact()

    def compact(self) -> None:
        """Rebuild the HNSW graph from the live vectors, dropping tombstones."""
        ids = _live_ids(self.index)
        if self.tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))]
        fresh = self._new()
        for start in range(0, len(ids), _SCAN_CHUNK):
            chunk = ids[start : start + _SCAN_CHUNK]
            fresh.add_with_ids(self.index.reconstruct_batch(chunk), chunk)
        self.index = fresh
        self.tombstones = set()

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        kk = min(self.index.ntotal, k + len(self.tombstones))
        if kk == 0:
            return np.empty(0, dtype=np.int64)
        params = faiss.SearchParametersHNSW(efSearch=max(self.options.ef_search, kk))
        _, ids = self.index.search(q, kk, params=params)
        ids = _valid(ids[0])
        if self.tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))]
        return ids[:k]

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(ids)

    def export(self) -> tuple[faiss.Index, bool]:
        if self.tombstones:
            self.compact()
        return self.index, True


# ---- the gallery ------------------------------------------------------------------------------
class Gallery:
    """FAISS index + metadata table (+ optional re-ranking graph) over one descriptor dimension."""

    def __init__(
        self,
        dim: int,
        kind: GalleryKind = "flat",
        use_gpu: bool | None = None,
        graph_k: int | None = 30,
        options: IndexOptions | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if graph_k is not None and (isinstance(graph_k, bool) or not isinstance(graph_k, int) or graph_k < 1):
            raise ValueError(f"graph_k must be None or an int >= 1, got {graph_k!r}")
        self.dim = dim
        self.kind: GalleryKind = kind
        self.options = options if options is not None else IndexOptions()
        self.graph_k = graph_k
        self.use_gpu = self._resolve_gpu(kind, use_gpu)
        self._lock = _ReadWriteLock()
        # The re-ranking graph is another module's object: do not assume it tolerates concurrent calls.
        self._graph_lock = threading.Lock()
        self._reset()

    @staticmethod
    def _resolve_gpu(kind: str, use_gpu: bool | None) -> bool:
        if use_gpu is None:
            return kind == "flat" and gpu_available()
        if use_gpu:
            if kind != "flat":
                raise ValueError(f"use_gpu=True is supported for kind='flat' only, not {kind!r}")
            if not gpu_available():
                raise ValueError("use_gpu=True but this faiss build has no GPU support or sees no GPU")
        return bool(use_gpu)

    def _reset(self, index: faiss.Index | None = None) -> None:
        self._backend: _Backend
        if self.kind == "flat":
            self._backend = _FlatBackend(self.dim, self.use_gpu, index)
        elif self.kind == "ivf":
            self._backend = _IVFBackend(self.dim, self.options, index)
        else:
            self._backend = _HNSWBackend(self.dim, self.options, index)
        self._entries: dict[int, GalleryEntry] = {}
        self._by_tracklet: dict[str, int] = {}
        self._by_identity: dict[str, set[int]] = {}
        self._graph: GalleryNeighborGraph | None = None
        if self.graph_k is not None:
            from index.rerank import GalleryNeighborGraph

            self._graph = GalleryNeighborGraph(self.dim, k=self.graph_k)

    # ---- contents ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, int_id: object) -> bool:
        return int_id in self._entries

    @property
    def trained(self) -> bool:
        """False only for an IVF gallery still waiting for enough vectors to train."""
        return not isinstance(self._backend, _IVFBackend) or self._backend.ivf is not None

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
        return np.ascontiguousarray(self._backend.reconstruct(ids), dtype=np.float32)

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
            self._backend.add(ids, x)
            if self._graph is not None:
                self._graph.add(ids, x)
            for e in entries:
                self._entries[int(e.int_id)] = e
                self._by_tracklet[e.tracklet_id] = int(e.int_id)
                self._by_identity.setdefault(e.identity, set()).add(int(e.int_id))

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
            self._backend.remove(ids)
            if self._graph is not None:
                self._graph.remove(ids)
            for i in ids.tolist():
                e = self._entries.pop(i)
                del self._by_tracklet[e.tracklet_id]
                members = self._by_identity[e.identity]
                members.discard(i)
                if not members:
                    del self._by_identity[e.identity]
            return len(ids)

    def remove_tracklets(self, tracklet_ids: Iterable[str]) -> int:
        with self._lock.write():
            return self.remove([self._by_tracklet[t] for t in tracklet_ids if t in self._by_tracklet])

    def rebuild_from(self, store: Store, batch: int = 1000) -> None:
        """Replace the contents with every record of ``store`` (same int ids).

        Raises ``DimensionMismatch`` when the store's descriptors have another dimension.
        """
        info = store.info()
        if info.dim is not None and info.dim != self.dim:
            raise DimensionMismatch(info.dim, self.dim, "the gallery index")
        with self._lock.write():
            self._reset()
            pending: list[Record] = []
            for record in store.iter_records(batch=batch):
                pending.append(record)
                if len(pending) >= batch:
                    self.add_records(pending)
                    pending = []
            self.add_records(pending)

    @classmethod
    def from_store(
        cls,
        store: Store,
        dim: int | None = None,
        kind: GalleryKind = "flat",
        use_gpu: bool | None = None,
        graph_k: int | None = 30,
        options: IndexOptions | None = None,
    ) -> Gallery:
        """A new gallery holding every record of ``store``; ``dim`` defaults to the store's."""
        store_dim = store.info().dim
        if dim is None:
            if store_dim is None:
                raise ValueError("the store is empty and fixes no dimension: pass dim")
            dim = store_dim
        gallery = cls(dim, kind=kind, use_gpu=use_gpu, graph_k=graph_k, options=options)
        gallery.rebuild_from(store)
        return gallery

    # ---- snapshots --------------------------------------------------------------------------
    def export_state(self) -> GalleryState:
        """The CPU index and metadata table (HNSW tombstones are compacted first)."""
        with self._lock.write():
            index, trained = self._backend.export()
            return GalleryState(
                dim=self.dim,
                kind=self.kind,
                options=self.options,
                index=faiss.clone_index(index),
                trained=trained,
                entries=[self._entries[i] for i in sorted(self._entries)],
            )

    @classmethod
    def from_state(
        cls, state: GalleryState, use_gpu: bool | None = None, graph_k: int | None = 30
    ) -> Gallery:
        """Recreate a gallery from ``export_state`` output; raises ``ValueError`` if they disagree."""
        gallery = cls(state.dim, kind=state.kind, use_gpu=use_gpu, graph_k=graph_k, options=state.options)  # type: ignore[arg-type]
        index = state.index
        if index.d != state.dim:
            raise ValueError(f"snapshot index has dimension {index.d}, expected {state.dim}")
        if index.ntotal != len(state.entries):
            raise ValueError(f"snapshot index holds {index.ntotal} vectors for {len(state.entries)} entries")
        expected_type = faiss.IndexIVFFlat if (state.kind == "ivf" and state.trained) else faiss.IndexIDMap2
        if not isinstance(index, expected_type):
            raise ValueError(f"snapshot index is a {type(index).__name__}, expected {expected_type.__name__}")
        with gallery._lock.write():
            gallery._reset(index)
            ids = np.array([e.int_id for e in state.entries], dtype=np.int64)
            indexed = _live_ids(index) if isinstance(index, faiss.IndexIDMap2) else None
            if indexed is not None and not np.array_equal(np.sort(indexed), np.sort(ids)):
                raise ValueError("snapshot index ids differ from its entry table")
            for e in state.entries:
                gallery._entries[e.int_id] = e
                gallery._by_tracklet[e.tracklet_id] = e.int_id
                gallery._by_identity.setdefault(e.identity, set()).add(e.int_id)
            if len(gallery._by_tracklet) != len(state.entries):
                raise ValueError("snapshot entry table repeats a tracklet id")
            if gallery._graph is not None:
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
    ) -> SearchResult:
        """Rank gallery identities for one unit-norm query descriptor [dim].

        ``candidates`` is the minimum number of tracklets taken from the index (after filtering);
        the pool grows until it also spans ``top_k`` identities or holds every admissible item.
        Identity score = max (default) or mean of its tracklet scores. Without re-ranking each
        listed identity carries all of its admissible tracklets, and ``mean`` averages over all of
        them; identities are those appearing in the pool (an identity with no tracklet in the pool
        has a lower max than every pooled one, but with ``mean`` it is not considered). With
        re-ranking, aggregation uses the re-ranked pool only.
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
            pool, exhaustive = self._pool(q, filt, candidates, top_k)
            if len(pool) == 0:
                return SearchResult([], [], aggregate, rerank is not None, exhaustive)
            cos = self._vectors(pool) @ q
            if rerank is not None:
                assert self._graph is not None
                with self._graph_lock:
                    dist = np.asarray(
                        self._graph.rerank(
                            q, pool, k1=rerank.k1, k2=rerank.k2, lambda_value=rerank.lambda_value
                        ),
                        dtype=np.float32,
                    )
                if dist.shape != (len(pool),):
                    raise RuntimeError(f"re-ranking returned shape {dist.shape} for {len(pool)} candidates")
                hits = [
                    self._hit(int(i), float(c), 1.0 - float(d), float(d))
                    for i, c, d in zip(pool, cos, dist, strict=True)
                ]
                ranked_hits = _sort_hits(hits)
                identities = self._aggregate_pool(ranked_hits, top_k, aggregate)
            else:
                hits = [self._hit(int(i), float(c), float(c), None) for i, c in zip(pool, cos, strict=True)]
                ranked_hits = _sort_hits(hits)
                identities = self._aggregate_complete(q, ranked_hits, filt, top_k, aggregate)
            return SearchResult(identities, ranked_hits, aggregate, rerank is not None, exhaustive)

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
        k = min(n, max(want, want_identities) * (self.options.filter_expansion if filt is not None else 1))
        q2 = q.reshape(1, -1)
        # An exact index may grow the pool up to the whole gallery (its cost barely depends on k);
        # an approximate one grows once, then the exact scan below is cheaper than a huge
        # efSearch / nprobe and is guaranteed complete.
        growths_left = n if self._backend.exact else 1
        while True:
            ids = self._backend.search(q2, k)
            if filt is not None:
                ids = np.array([i for i in ids.tolist() if filt.matches(self._entries[i])], dtype=np.int64)
            cut = self._enough_prefix(ids, want, want_identities)
            if cut is not None:
                return ids[:cut], self._backend.exact
            if k >= n or growths_left == 0:
                break
            growths_left -= 1
            k = min(n, k * 4)
        # Too few survived: a selective filter or an approximate index that returned fewer than
        # asked. Scan the whole admissible subset exactly so nothing that exists is left out.
        subset = self._admissible(filt)
        if self._backend.exact and len(ids) == len(subset):
            return ids, True
        scores = (
            np.concatenate(
                [self._vectors(subset[s : s + _SCAN_CHUNK]) @ q for s in range(0, len(subset), _SCAN_CHUNK)]
            )
            if len(subset)
            else np.empty(0, dtype=np.float32)
        )
        ranked = subset[np.lexsort((subset, -scores))]
        cut = self._enough_prefix(ranked, want, want_identities)
        return ranked[: cut if cut is not None else len(ranked)], True

    def _aggregate_pool(self, ranked: list[TrackletHit], top_k: int, aggregate: str) -> list[IdentityHit]:
        groups: dict[str, list[TrackletHit]] = {}
        for h in ranked:
            groups.setdefault(h.identity, []).append(h)
        return _rank_identities(groups, top_k, aggregate)

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
        extra = np.array(sorted(missing), dtype=np.int64)
        if len(extra):
            for i, c in zip(extra.tolist(), (self._vectors(extra) @ q).tolist(), strict=True):
                known[i] = self._hit(i, float(c), float(c), None)
        wanted = set(order)
        for h in _sort_hits(list(known.values())):
            if h.identity in wanted:
                groups.setdefault(h.identity, []).append(h)
        return _rank_identities(groups, top_k, aggregate)


def _sort_hits(hits: list[TrackletHit]) -> list[TrackletHit]:
    return sorted(hits, key=lambda h: (-h.score, h.int_id))


def _rank_identities(groups: dict[str, list[TrackletHit]], top_k: int, aggregate: str) -> list[IdentityHit]:
    """``groups`` lists are sorted best first; ties between identities go to the lower best int id."""
    scored = []
    for name, hits in groups.items():
        if aggregate == "max":
            score = hits[0].score
        else:
            score = float(np.mean(np.array([h.score for h in hits], dtype=np.float64)))
        scored.append((-score, hits[0].int_id, name, score, hits))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [
        IdentityHit(rank=r, identity=name, score=score, tracklets=hits)
        for r, (_, _, name, score, hits) in enumerate(scored[:top_k], start=1)
    ]


def check_descriptors(x: object, dim: int, name: str, single: bool = False) -> np.ndarray:
    """Validate unit-norm descriptors; returns float32 C-contiguous [n, dim] (or [dim] if ``single``)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    want_ndim = 1 if single else 2
    if x.ndim != want_ndim or x.shape[-1] != dim:
        shape = f"[{dim}]" if single else f"[n, {dim}]"
        raise ValueError(f"{name} must have shape {shape}, got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    out = np.ascontiguousarray(x, dtype=np.float32)
    if single or not out.flags.writeable:
        # Never hand a caller's (possibly read-only) buffer on to FAISS or torch.
        out = out.copy()
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    flat = out.reshape(-1, dim)
    norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(bad):
        where = "" if single else f" (row {int(bad[0])})"
        raise ValueError(
            f"{name} must be L2-normalised{where}: norm {float(norms[bad[0]]):.6g} is not within "
            f"{NORM_TOLERANCE} of 1"
        )
    return out


__all__ = [
    "AGGREGATES",
    "KINDS",
    "Gallery",
    "GalleryEntry",
    "GalleryState",
    "IdentityHit",
    "IndexOptions",
    "RerankParams",
    "SearchFilter",
    "SearchResult",
    "TrackletHit",
    "check_descriptors",
    "gpu_available",
]
