"""The vector-index interface behind ``Gallery``, and the one registry of index kinds.

A vector index maps stable int64 ids to unit-norm float32 descriptors and answers inner-product
(cosine) k-NN searches. Its signatures use numpy arrays and this package's value types only, so
the gallery logic never sees an engine's own types (FAISS, Milvus).

Kinds register themselves with ``@register_index("name")``; ``INDEX_KINDS`` (name -> class) is
the only list of kinds: ``Gallery``, the service settings and the ``sasreid serve --index`` choices
all read it, and ``make_index`` names the valid kinds when asked for another.

Two optional capabilities:

* ``filters``: ``search`` applies a ``SearchFilter`` itself (in the engine); otherwise the gallery
  filters the returned candidates.
* ``durable``: the contents outlive the process (an external engine). The gallery then reconciles
  the index with the store at start instead of re-adding every vector.

Indexes that can be written to a snapshot implement ``SnapshotIndex`` (``export`` / ``restore``
with opaque bytes).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from index.types import GalleryEntry, IndexOptions, SearchFilter


class VectorIndex(ABC):
    """Ids -> unit descriptors [dim], searched by inner product. Not thread-safe for writes: the
    gallery serialises ``add``/``remove``/``clear`` against everything else; concurrent
    ``search``/``vectors`` calls must be safe."""

    kind: ClassVar[str] = ""
    filters: ClassVar[bool] = False
    durable: ClassVar[bool] = False

    def __init__(self, dim: int, options: IndexOptions) -> None:
        self.dim = dim
        self.options = options

    @property
    @abstractmethod
    def exact(self) -> bool:
        """True when ``search`` returns the exact top k (then the gallery may grow k instead of
        falling back to a scan)."""

    @property
    def trained(self) -> bool:
        """False only while an index that needs training still waits for enough vectors."""
        return True

    @abstractmethod
    def add(self, entries: Sequence[GalleryEntry], vectors: np.ndarray) -> None:
        """Index new ids (``entries[i].int_id``) with their descriptors float32 [n, dim]; the
        entries carry the metadata an index that ``filters`` needs."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Drop these ids (int64 [n], all present)."""

    @abstractmethod
    def search(self, query: np.ndarray, k: int, where: SearchFilter | None = None) -> np.ndarray:
        """Up to k ids (int64) nearest to ``query`` float32 [1, dim], best first. ``where`` is
        only passed to indexes with ``filters``; they return matching ids only."""

    @abstractmethod
    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored descriptors of ``ids`` (int64 [n], all present): float32 [n, dim]."""

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the ids of ``ids`` that are indexed, in the given order; their descriptors). The
        gallery uses it where a shared (``durable``) index may already lack an id that another
        process deleted; the default is ``vectors`` (every id present)."""
        return ids, self.vectors(ids)

    @abstractmethod
    def ids(self) -> np.ndarray:
        """Every indexed id, int64 [len(self)], in no particular order."""

    @abstractmethod
    def clear(self) -> None:
        """Remove everything (the gallery is about to be refilled from the store)."""

    @abstractmethod
    def __len__(self) -> int: ...

    def close(self) -> None:  # noqa: B027 - most kinds hold no connection; the default is to do nothing
        """Release connections or files this index holds."""


class SnapshotIndex(VectorIndex):
    """A vector index whose whole state can be written to bytes and read back."""

    @abstractmethod
    def export(self) -> tuple[bytes, bool]:
        """(serialised index, trained) of the current contents."""

    @classmethod
    @abstractmethod
    def restore(cls, dim: int, options: IndexOptions, data: bytes, trained: bool, **params: Any) -> SnapshotIndex:
        """The index ``export`` wrote; ``ValueError`` when the bytes are not such an index."""


INDEX_KINDS: dict[str, type[VectorIndex]] = {}
# Modules whose import registers the built-in kinds (imported on first use of the registry, so that
# importing this module stays light and an engine's client is loaded only by its own module).
_BUILTIN_MODULES = ("index.faiss_index", "index.milvus_index")

_V = TypeVar("_V", bound=type[VectorIndex])


def register_index(name: str) -> Callable[[_V], _V]:
    """Class decorator: make ``cls`` the index of kind ``name``."""

    def decorate(cls: _V) -> _V:
        if name in INDEX_KINDS and INDEX_KINDS[name] is not cls:
            raise ValueError(f"index kind {name!r} is already registered by {INDEX_KINDS[name].__name__}")
        cls.kind = name
        INDEX_KINDS[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def index_kinds() -> tuple[str, ...]:
    """The registered kinds, sorted (``flat`` first: it is the default)."""
    _load_builtins()
    return tuple(sorted(INDEX_KINDS, key=lambda k: (k != "flat", k)))


def index_class(kind: str) -> type[VectorIndex]:
    """The class of ``kind``; ``ValueError`` naming the valid kinds otherwise."""
    _load_builtins()
    try:
        return INDEX_KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown index kind {kind!r}; valid kinds: {', '.join(index_kinds())}") from None


def make_index(kind: str, dim: int, options: IndexOptions | None = None, **params: Any) -> VectorIndex:
    """A new, empty index of ``kind`` (``params`` are the kind's own, e.g. ``use_gpu`` for flat,
    ``uri`` for milvus)."""
    return index_class(kind)(dim, options if options is not None else IndexOptions(), **params)
