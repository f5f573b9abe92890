"""FAISS vector indexes: ``flat``, ``ivf`` and ``hnsw`` (in-process, rebuilt from the store or a
snapshot at start).

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

FAISS types stay inside this module: snapshots see ``faiss.serialize_index`` bytes only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from index.types import GalleryEntry, IndexOptions, SearchFilter
from index.vector_index import SnapshotIndex, register_index

# GPU flat search handles k up to this; larger pools are searched on the CPU master.
_GPU_MAX_K = 2048
# Re-add vectors in chunks so a compaction never copies the whole index at once.
_CHUNK = 16384


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_version() -> str:
    return str(faiss.__version__)


def _live_ids(idmap: faiss.IndexIDMap2) -> np.ndarray:
    return faiss.vector_to_array(idmap.id_map).astype(np.int64)


def _valid(ids: np.ndarray) -> np.ndarray:
    return ids[ids >= 0]


def _no_gpu(kind: str, use_gpu: bool | None) -> None:
    if use_gpu:
        raise ValueError(f"use_gpu=True is supported for kind='flat' only, not {kind!r}")


def _ids_of(entries: Sequence[GalleryEntry]) -> np.ndarray:
    return np.fromiter((e.int_id for e in entries), dtype=np.int64, count=len(entries))


def _deserialize(data: bytes, dim: int) -> faiss.Index:
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise ValueError(f"not a FAISS index: {exc}") from None
    if index.d != dim:
        raise ValueError(f"snapshot index has dimension {index.d}, expected {dim}")
    return index


def _expect(index: faiss.Index, expected: type) -> None:
    if not isinstance(index, expected):
        raise ValueError(f"snapshot index is a {type(index).__name__}, expected {expected.__name__}")


@register_index("flat")
class FlatIndex(SnapshotIndex):
    """Exact inner-product search (optionally on a GPU mirror)."""

    def __init__(self, dim: int, options: IndexOptions, use_gpu: bool | None = None) -> None:
        super().__init__(dim, options)
        if use_gpu is None:
            use_gpu = gpu_available()
        elif use_gpu and not gpu_available():
            raise ValueError("use_gpu=True but this faiss build has no GPU support or sees no GPU")
        self.use_gpu = bool(use_gpu)
        self._gpu_res = faiss.StandardGpuResources() if self.use_gpu else None
        # Searches run concurrently (the gallery's read lock) but GPU indexes are not thread-safe,
        # and the mirror is built lazily inside search.
        self._gpu_lock = threading.Lock()
        self._adopt(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    def _adopt(self, index: faiss.IndexIDMap2) -> None:
        self.cpu: faiss.IndexIDMap2 = index
        self._gpu: faiss.Index | None = None
        self._gpu_ids = np.empty(0, dtype=np.int64)

    @property
    def exact(self) -> bool:
        return True

    def add(self, entries: Sequence[GalleryEntry], vectors: np.ndarray) -> None:
        ids = _ids_of(entries)
        self.cpu.add_with_ids(vectors, ids)
        if self._gpu is not None:
            # IndexIDMap2 appends to its inner flat index and id_map in the same order.
            self._gpu.add(vectors)
            self._gpu_ids = np.concatenate([self._gpu_ids, ids])

    def remove(self, ids: np.ndarray) -> None:
        self.cpu.remove_ids(faiss.IDSelectorArray(ids))
        self._gpu = None  # positions shifted: rebuild the mirror on the next search

    def search(self, query: np.ndarray, k: int, where: SearchFilter | None = None) -> np.ndarray:
        if self._gpu_res is not None and k <= _GPU_MAX_K:
            with self._gpu_lock:
                if self._gpu is None:
                    inner = faiss.downcast_index(self.cpu.index)
                    self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, inner)
                    self._gpu_ids = _live_ids(self.cpu)
                _, pos = self._gpu.search(query, k)
                pos = pos[0]
                return self._gpu_ids[pos[pos >= 0]]
        _, ids = self.cpu.search(query, k)
        return _valid(ids[0])

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.cpu.reconstruct_batch(ids)

    def ids(self) -> np.ndarray:
        return _live_ids(self.cpu)

    def clear(self) -> None:
        self._adopt(faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)))

    def __len__(self) -> int:
        return int(self.cpu.ntotal)

    def export(self) -> tuple[bytes, bool]:
        return faiss.serialize_index(self.cpu).tobytes(), True

    @classmethod
    def restore(
        cls, dim: int, options: IndexOptions, data: bytes, trained: bool, **params: Any
    ) -> FlatIndex:
        index = _deserialize(data, dim)
        _expect(index, faiss.IndexIDMap2)
        out = cls(dim, options, **params)
        out._adopt(index)
        return out


@register_index("ivf")
class IVFIndex(SnapshotIndex):
    """IVF-Flat, exact (a flat index) until ``options.min_train`` vectors have arrived."""

    def __init__(self, dim: int, options: IndexOptions, use_gpu: bool | None = None) -> None:
        super().__init__(dim, options)
        _no_gpu("ivf", use_gpu)
        self.ivf: faiss.IndexIVFFlat | None = None
        self.pending: faiss.IndexIDMap2 | None = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def exact(self) -> bool:
        return self.ivf is None

    @property
    def trained(self) -> bool:
        return self.ivf is not None

    def _current(self) -> faiss.Index:
        index = self.ivf if self.ivf is not None else self.pending
        assert index is not None
        return index

    def add(self, entries: Sequence[GalleryEntry], vectors: np.ndarray) -> None:
        ids = _ids_of(entries)
        if self.ivf is not None:
            self.ivf.add_with_ids(vectors, ids)
            return
        assert self.pending is not None
        self.pending.add_with_ids(vectors, ids)
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
        self._current().remove_ids(faiss.IDSelectorArray(ids))

    def search(self, query: np.ndarray, k: int, where: SearchFilter | None = None) -> np.ndarray:
        if self.ivf is None:
            assert self.pending is not None
            _, ids = self.pending.search(query, k)
        else:
            params = faiss.SearchParametersIVF(nprobe=min(self.options.nprobe, self.ivf.nlist))
            _, ids = self.ivf.search(query, k, params=params)
        return _valid(ids[0])

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._current().reconstruct_batch(ids)

    def ids(self) -> np.ndarray:
        if self.ivf is None:
            assert self.pending is not None
            return _live_ids(self.pending)
        # The hashtable direct map knows every id; it is not exposed, so walk the inverted lists.
        invlists = self.ivf.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(list_no), invlists.list_size(list_no)).copy()
            for list_no in range(self.ivf.nlist)
            if invlists.list_size(list_no)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)

    def clear(self) -> None:
        self.ivf = None
        self.pending = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def __len__(self) -> int:
        return int(self._current().ntotal)

    def export(self) -> tuple[bytes, bool]:
        return faiss.serialize_index(self._current()).tobytes(), self.ivf is not None

    @classmethod
    def restore(cls, dim: int, options: IndexOptions, data: bytes, trained: bool, **params: Any) -> IVFIndex:
        index = _deserialize(data, dim)
        out = cls(dim, options, **params)
        if trained:
            _expect(index, faiss.IndexIVFFlat)
            out.ivf, out.pending = index, None
        else:
            _expect(index, faiss.IndexIDMap2)
            out.pending = index
        return out


@register_index("hnsw")
class HNSWIndex(SnapshotIndex):
    """HNSW (approximate); removals are tombstones until a compaction."""

    def __init__(self, dim: int, options: IndexOptions, use_gpu: bool | None = None) -> None:
        super().__init__(dim, options)
        _no_gpu("hnsw", use_gpu)
        self.index: faiss.IndexIDMap2 = self._new()
        self.tombstones: set[int] = set()

    @property
    def exact(self) -> bool:
        return False

    def _new(self) -> faiss.IndexIDMap2:
        hnsw = faiss.IndexHNSWFlat(self.dim, self.options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.options.ef_construction
        return faiss.IndexIDMap2(hnsw)

    def add(self, entries: Sequence[GalleryEntry], vectors: np.ndarray) -> None:
        ids = _ids_of(entries)
        if self.tombstones and not self.tombstones.isdisjoint(ids.tolist()):
            # A tombstoned id still sits in the graph; re-adding it would duplicate it.
            self.compact()
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        self.tombstones.update(int(i) for i in ids)
        if len(self.tombstones) > self.options.tombstone_ratio * self.index.ntotal:
            self.compact()

    def compact(self) -> None:
        """Rebuild the HNSW graph from the live vectors, dropping tombstones."""
        ids = self.ids()
        fresh = self._new()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            fresh.add_with_ids(self.index.reconstruct_batch(chunk), chunk)
        self.index = fresh
        self.tombstones = set()

    def search(self, query: np.ndarray, k: int, where: SearchFilter | None = None) -> np.ndarray:
        kk = min(self.index.ntotal, k + len(self.tombstones))
        if kk == 0:
            return np.empty(0, dtype=np.int64)
        params = faiss.SearchParametersHNSW(efSearch=max(self.options.ef_search, kk))
        _, ids = self.index.search(query, kk, params=params)
        ids = _valid(ids[0])
        if self.tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))]
        return ids[:k]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(ids)

    def ids(self) -> np.ndarray:
        ids = _live_ids(self.index)
        if self.tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))]
        return ids

    def clear(self) -> None:
        self.index = self._new()
        self.tombstones = set()

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def export(self) -> tuple[bytes, bool]:
        if self.tombstones:
            self.compact()
        return faiss.serialize_index(self.index).tobytes(), True

    @classmethod
    def restore(cls, dim: int, options: IndexOptions, data: bytes, trained: bool, **params: Any) -> HNSWIndex:
        index = _deserialize(data, dim)
        _expect(index, faiss.IndexIDMap2)
        out = cls(dim, options, **params)
        out.index = index
        return out
