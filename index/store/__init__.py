"""Gallery stores: the system of record behind the FAISS index (Redis, or SQLite when embedded).

``open_store`` picks the backend from a URL:

* ``sqlite:///relative/path.db`` (relative to the working directory) or ``sqlite:////abs/path.db``
  (the path is everything after ``sqlite:///``, as in SQLAlchemy);
* ``redis://host:port/db`` (or ``rediss://`` for TLS), keys under ``redis_prefix``;
* ``None``: SQLite at ``default_sqlite_path``.
"""

from __future__ import annotations

from pathlib import Path

from index.store.base import DEFAULT_CHANGE_RETENTION, Change, PutResult, Store, StoreInfo
from index.store.errors import (
    ChangesTrimmed,
    DimensionMismatch,
    FingerprintMismatch,
    InvalidRecord,
    JobExists,
    SchemaVersionError,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
    TrackletConflict,
    TrackletNotFound,
)
from index.store.job import Job
from index.store.record import PLATFORMS, Record
from index.store.redis_store import DEFAULT_PREFIX, RedisStore
from index.store.sqlite_store import SQLiteStore

__all__ = [
    "DEFAULT_CHANGE_RETENTION",
    "DEFAULT_PREFIX",
    "PLATFORMS",
    "Change",
    "ChangesTrimmed",
    "DimensionMismatch",
    "FingerprintMismatch",
    "InvalidRecord",
    "Job",
    "JobExists",
    "PutResult",
    "Record",
    "RedisStore",
    "SQLiteStore",
    "SchemaVersionError",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreFull",
    "StoreInfo",
    "StoreReadOnly",
    "StoreUnavailable",
    "TrackletConflict",
    "TrackletNotFound",
    "open_store",
]

_ACCEPTED = "'sqlite:///relative.db', 'sqlite:////abs/path.db', 'redis://host:port/db' or None"


def open_store(
    url: str | None, default_sqlite_path: str | Path | None = None, redis_prefix: str = DEFAULT_PREFIX
) -> Store:
    """Open the store named by ``url`` (see the module docstring for the accepted forms)."""
    if url is None:
        if default_sqlite_path is None:
            raise ValueError("store url is None and no default_sqlite_path was given")
        return SQLiteStore(Path(default_sqlite_path))
    if not isinstance(url, str):
        raise ValueError(
            f"store url must be a string or None, got {type(url).__name__}; accepted: {_ACCEPTED}"
        )
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path or path.endswith("/"):
            raise ValueError(f"store url {url!r} names no database file; accepted: {_ACCEPTED}")
        return SQLiteStore(Path(path))
    if url.startswith(("redis://", "rediss://")):
        return RedisStore(url, prefix=redis_prefix)
    raise ValueError(f"unknown store url {url!r}; accepted: {_ACCEPTED}")
