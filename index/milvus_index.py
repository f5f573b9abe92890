"""Milvus vector index (``milvus``): descriptors and filter fields in a Milvus collection.

The URI is a local ``*.db`` file (milvus-lite, the engine embedded in a wheel: tests and single
machines) or ``http://host:19530`` (a Milvus server). The collection holds, per tracklet, its int
id (primary key), descriptor and the filter fields (identity, camera, platform, session,
created_at); searches are exact (a FLAT index, inner product) and filters run in Milvus. Absent
camera / platform / session are stored as "" (the store never holds empty strings there).

Milvus does not enforce primary-key uniqueness, so every write is an ``upsert``. The store stays
the system of record: the gallery writes the store first and this index second, and reconciles the
two at start (``Gallery.reconcile``) instead of re-adding every vector.

pymilvus is imported when an index is opened, so the other kinds work without it installed
(``pip install '.[milvus]'``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.types import GalleryEntry, IndexOptions, SearchFilter
from index.vector_index import VectorIndex, register_index

DEFAULT_COLLECTION = "sasreid_gallery"
# Milvus answers at most this many hits per search; the gallery falls back to an exact scan of the
# admissible subset when a search returns fewer than it asked for.
MAX_LIMIT = 16384
_WRITE_CHUNK = 1000
_READ_CHUNK = 1000
_TEXT_MAX = 1024
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
# milvus-lite runs one engine process per *.db file for the whole Python process and keeps it after
# a client closes (the file stays locked against other processes). Count the open indexes per file
# and stop the engine when the last one closes, so a restarted server can open the file.
_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def _lite_path(uri: str) -> str | None:
    return str(Path(uri).absolute().resolve()) if uri.endswith(".db") else None


def _literal(value: str) -> str:
    """A Milvus string literal: double-quoted, with quotes and backslashes escaped (JSON's rules)."""
    return json.dumps(value, ensure_ascii=False)


def milvus_filter(where: SearchFilter | None) -> str:
    """The Milvus boolean expression equivalent to ``SearchFilter.matches`` ("" = no filter)."""
    if where is None:
        return ""
    parts: list[str] = []
    for name in ("platform", "camera", "session"):
        value = getattr(where, name)
        if value is not None:
            parts.append(f"{name} == {_literal(value)}")
    if where.exclude_camera is not None:
        parts.append(f"camera != {_literal(where.exclude_camera)}")
    if where.exclude_identities:
        names = ", ".join(_literal(i) for i in sorted(where.exclude_identities))
        parts.append(f"identity not in [{names}]")
    if where.created_from is not None:
        parts.append(f"created_at >= {float(where.created_from)!r}")
    if where.created_to is not None:
        parts.append(f"created_at < {float(where.created_to)!r}")
    return " and ".join(parts)


def collection_name(fingerprint: str | None, prefix: str = DEFAULT_COLLECTION) -> str:
    """A valid collection name for descriptors of one checkpoint: a re-embedded gallery (another
    fingerprint) gets a collection of its own, filled from the store at the next start."""
    if not fingerprint:
        return prefix
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', fingerprint)}"[:255]


@register_index("milvus")
class MilvusIndex(VectorIndex):
    """A Milvus collection (FLAT, inner product) holding descriptors and filter fields."""

    filters = True
    durable = True

    def __init__(
        self,
        dim: int,
        options: IndexOptions,
        use_gpu: bool | None = None,
        uri: str | None = None,
        collection: str = DEFAULT_COLLECTION,
    ) -> None:
        super().__init__(dim, options)
        if use_gpu:
            raise ValueError("use_gpu=True is supported for kind='flat' only, not 'milvus'")
        if not uri:
            raise ValueError("the milvus index needs a URI: a local *.db file or http://host:19530 (--milvus-uri)")
        if not _NAME.match(collection):
            raise ValueError(f"invalid Milvus collection name {collection!r}")
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise ValueError(f"the milvus index needs pymilvus: pip install '.[milvus]' ({exc})") from None
        self.uri = uri
        self.collection = collection
        self._lite = _lite_path(uri)
        self._client: Any = MilvusClient(uri)
        if self._lite is not None:
            with _LITE_LOCK:
                _LITE_USERS[self._lite] = _LITE_USERS.get(self._lite, 0) + 1
        try:
            if self._client.has_collection(collection):
                self._check_existing()
            else:
                try:
                    self._create()
                except Exception:
                    # Replicas starting together race to create it: the loser uses the winner's.
                    if not self._client.has_collection(collection):
                        raise
                    self._check_existing()
            self._client.load_collection(collection)
        except BaseException:
            self.close()
            raise

    def _check_existing(self) -> None:
        info = self._client.describe_collection(self.collection)
        dims = [f.get("params", {}).get("dim") for f in info.get("fields", []) if f.get("name") == "vector"]
        if not dims or int(dims[0]) != self.dim:
            raise ValueError(
                f"Milvus collection {self.collection!r} at {self.uri} holds {dims[0] if dims else '?'}-d "
                f"vectors, expected {self.dim}-d"
            )

    def _create(self) -> None:
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("int_id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        for name in ("identity", "camera", "platform", "session"):
            schema.add_field(name, DataType.VARCHAR, max_length=_TEXT_MAX)
        schema.add_field("created_at", DataType.DOUBLE)
        params = self._client.prepare_index_params()
        # FLAT: exact, and one of the three index types milvus-lite supports (no HNSW there).
        params.add_index("vector", index_type="FLAT", metric_type="IP")
        # Strong consistency: a search sees every write acknowledged before it.
        self._client.create_collection(
            self.collection, schema=schema, index_params=params, consistency_level="Strong"
        )

    @property
    def exact(self) -> bool:
        return True

    def add(self, entries: Sequence[GalleryEntry], vectors: np.ndarray) -> None:
        for start in range(0, len(entries), _WRITE_CHUNK):
            rows = [
                {
                    "int_id": int(e.int_id),
                    "vector": v.tolist(),
                    "identity": e.identity,
                    "camera": e.camera or "",
                    "platform": e.platform or "",
                    "session": e.session or "",
                    "created_at": float(e.created_at) if e.created_at is not None else float("-inf"),
                }
                for e, v in zip(
                    entries[start : start + _WRITE_CHUNK], vectors[start : start + _WRITE_CHUNK], strict=True
                )
            ]
            self._client.upsert(self.collection, rows)

    def remove(self, ids: np.ndarray) -> None:
        for start in range(0, len(ids), _WRITE_CHUNK):
            self._client.delete(self.collection, ids=[int(i) for i in ids[start : start + _WRITE_CHUNK]])

    def search(self, query: np.ndarray, k: int, where: SearchFilter | None = None) -> np.ndarray:
        hits = self._client.search(
            self.collection,
            data=[np.asarray(query, dtype=np.float32).reshape(-1).tolist()],
            limit=min(k, MAX_LIMIT),
            filter=milvus_filter(where),
            output_fields=["int_id"],
            search_params={"metric_type": "IP"},
        )[0]
        # Equal scores in id order, as the other kinds break ties.
        ordered = sorted(hits, key=lambda h: (-float(h["distance"]), int(h["id"])))
        return np.array([int(h["id"]) for h in ordered], dtype=np.int64)

    def _get(self, ids: np.ndarray) -> dict[int, list[float]]:
        rows: dict[int, list[float]] = {}
        for start in range(0, len(ids), _READ_CHUNK):
            chunk = [int(i) for i in ids[start : start + _READ_CHUNK]]
            for r in self._client.get(self.collection, ids=chunk, output_fields=["vector"]):
                rows[int(r["int_id"])] = r["vector"]
        return rows

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        rows = self._get(ids)
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise KeyError(f"int ids not in the Milvus collection {self.collection!r}: {missing[:5]}")
        return np.asarray([rows[int(i)] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Another replica may have deleted some of them since this one's metadata listed them.
        rows = self._get(ids)
        found = np.array([int(i) for i in ids if int(i) in rows], dtype=np.int64)
        return found, np.asarray([rows[int(i)] for i in found], dtype=np.float32).reshape(len(found), self.dim)

    def ids(self) -> np.ndarray:
        iterator = self._client.query_iterator(
            self.collection, batch_size=_READ_CHUNK, filter="int_id >= 0", output_fields=["int_id"]
        )
        parts: list[int] = []
        # Bounded by the row count (+ slack for writes landing meanwhile); ends on an empty batch.
        rows = int(self._client.get_collection_stats(self.collection).get("row_count", 0))
        try:
            for _ in range(rows // _READ_CHUNK + 3):
                batch = iterator.next()
                if not batch:
                    break
                parts.extend(int(r["int_id"]) for r in batch)
        finally:
            iterator.close()
        return np.array(parts, dtype=np.int64)

    def clear(self) -> None:
        self._client.drop_collection(self.collection)
        self._create()
        self._client.load_collection(self.collection)

    def __len__(self) -> int:
        return len(self.ids())

    def close(self) -> None:
        self._client.close()
        if self._lite is None:
            return
        with _LITE_LOCK:
            users = _LITE_USERS.get(self._lite, 0) - 1
            if users > 0:
                _LITE_USERS[self._lite] = users
                return
            _LITE_USERS.pop(self._lite, None)
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(self._lite)
        self._lite = None
