"""SQLite store: the embedded system of record used when no Redis is configured.

One database file in WAL mode with ``synchronous=FULL`` (a write call returns only after its
transaction is on disk). Each write call is one ``BEGIN IMMEDIATE`` transaction, so it takes the
write lock up front and never fails half-way on a lock upgrade. One connection is shared by all
threads behind a lock; other processes on the same file are serialised by SQLite itself.

Schema (``PRAGMA user_version`` = ``SCHEMA_VERSION``):

* ``meta(key, value)``: ``fingerprint``, ``dim`` and ``next_int_id`` (the int id counter; kept
  here rather than derived from ``MAX(int_id)`` so deleting the newest tracklet never frees its id);
* ``tracklets``: one row per record, descriptor as a little-endian float32 BLOB, indexed by identity;
* ``frames(int_id, seq, data)``: kept frames, deleted with their tracklet (foreign key cascade);
* ``changes(seq, op, tracklet_id, int_id)``: the change feed, appended by the write transaction it
  describes; ``meta.change_seq`` is its head (kept in ``meta`` so trimming never frees a number).
  Version 1 files get the (empty) table when opened.
* ``jobs(id, created_at, version, finished, data)``: long-running jobs (``index.store.job``; ``data`` is the
  job's JSON), created on open in any version like ``blobs``;
* ``blobs(name, data)``: derived data (``Store.put_blob``, e.g. the re-ranking graph), created on
  open in any version: not records, so older readers may ignore it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from index.store.base import (
    DEFAULT_CHANGE_RETENTION,
    SCHEMA_VERSION,
    Change,
    ChangeOp,
    PutResult,
    Store,
    StoreInfo,
    check_after,
    check_against_info,
    check_batch_size,
    check_blob_name,
    check_jobs_limit,
    check_page,
    check_replacement_coverage,
    check_retention,
    resolve_existing,
    with_int_id,
)
from index.store.errors import (
    JobExists,
    SchemaVersionError,
    StoreBusy,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
    TrackletNotFound,
)
from index.store.job import Job, check_job
from index.store.record import (
    Record,
    descriptor_from_bytes,
    descriptor_to_bytes,
    encode_metadata,
    validate_frames,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tracklets (
    int_id INTEGER PRIMARY KEY,
    tracklet_id TEXT NOT NULL UNIQUE,
    identity TEXT NOT NULL,
    camera TEXT,
    platform TEXT,
    session TEXT,
    num_frames INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    fingerprint TEXT NOT NULL,
    descriptor BLOB NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tracklets_by_identity ON tracklets(identity, int_id);
CREATE TABLE IF NOT EXISTS frames (
    int_id INTEGER NOT NULL REFERENCES tracklets(int_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (int_id, seq)
);
"""
# Schema version 2: the change feed (see the module docstring).
_CHANGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    tracklet_id TEXT NOT NULL,
    int_id INTEGER NOT NULL
)
"""

# Derived data (Store.put_blob); outside the schema version: older readers ignore the table.
_BLOBS_SCHEMA = "CREATE TABLE IF NOT EXISTS blobs (name TEXT PRIMARY KEY, data BLOB NOT NULL)"

_JOBS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_at REAL NOT NULL, "
    "version INTEGER NOT NULL, finished INTEGER NOT NULL, data TEXT NOT NULL)"
)

# SQLite primary result codes (sqlite3 exposes them as constants only from Python 3.11).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_FULL = 13

_COLUMNS = (
    "int_id, tracklet_id, identity, camera, platform, session, num_frames, metadata, created_at, "
    "fingerprint, descriptor, content_hash"
)


class SQLiteStore(Store):
    def __init__(self, path: str | Path, change_retention: int = DEFAULT_CHANGE_RETENTION) -> None:
        self._retention = check_retention(change_retention)
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: transactions are opened explicitly, never implicitly by the module.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._closed = False
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            raise

    def _init_schema(self) -> None:
        conn = self._conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: could not switch SQLite to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._transaction():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has schema version {version}; this package reads up to {SCHEMA_VERSION}"
                )
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('next_int_id', '1')")
            if version < 2:
                conn.execute(_CHANGES_SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('change_seq', '0')")
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute(_BLOBS_SCHEMA)
            conn.execute(_JOBS_SCHEMA)

    # ---- helpers ------------------------------------------------------------------------
    class _Txn:
        def __init__(self, store: SQLiteStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store._check_open()
                self.store._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self.store._lock.release()
                raise self.store._translated(exc) from exc
            except BaseException:
                self.store._lock.release()
                raise
            return self.store._conn

        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
            conn = self.store._conn
            try:
                if exc_type is None:
                    try:
                        conn.execute("COMMIT")
                    except sqlite3.Error as commit_exc:
                        # A failed COMMIT (disk full, I/O error) can leave the transaction open;
                        # close it so the next call does not run inside it.
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise self.store._translated(commit_exc) from commit_exc
                else:
                    # SQLite may already have rolled back by itself (SQLITE_FULL can do that); a
                    # second ROLLBACK would raise and hide the real error.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.Error):
                        raise self.store._translated(exc) from exc
            finally:
                self.store._lock.release()

    def _transaction(self) -> SQLiteStore._Txn:
        return SQLiteStore._Txn(self)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            self._check_open()
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._translated(exc) from exc

    def _read_together(self, *queries: tuple[str, tuple[object, ...]]) -> list[list[tuple[object, ...]]]:
        """The rows of each ``(sql, params)`` query, all read in one transaction so they agree."""
        with self._lock:
            self._check_open()
            try:
                self._conn.execute("BEGIN")
                try:
                    return [self._conn.execute(sql, params).fetchall() for sql, params in queries]
                finally:
                    if self._conn.in_transaction:
                        self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._translated(exc) from exc

    def _translated(self, exc: sqlite3.Error) -> StoreError:
        """The store error for an SQLite failure, so callers (the API) can answer 507/503 with a
        stable code instead of a bare 500. Every failed write has been rolled back by then."""
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11; else the message decides
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(exc).lower()
        where = f"SQLite database {self.path}: {exc}"
        if primary == _SQLITE_FULL or "disk is full" in text:
            return StoreFull(f"{where} (nothing of this write was stored; free disk space)")
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
            return StoreBusy(f"{where} (another process holds the write lock; retry later)")
        if primary == _SQLITE_READONLY or "readonly" in text:
            return StoreReadOnly(f"{where} (the file or its directory is not writable)")
        if primary == _SQLITE_IOERR:
            # ENOSPC is SQLITE_FULL above; a write refused for another reason lands here (a quota,
            # a file-size limit, a failing disk). The transaction was rolled back.
            return StoreUnavailable(
                f"{where} (a write to the database failed: check free space, quotas, file-size limits "
                "and the disk; nothing of this write was stored)"
            )
        if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
            return StoreUnavailable(where)  # cannot open, corrupt file
        return StoreError(where)

    @staticmethod
    def _info(conn: sqlite3.Connection) -> StoreInfo:
        rows = dict(
            conn.execute("SELECT key, value FROM meta WHERE key IN ('fingerprint', 'dim')").fetchall()
        )
        return StoreInfo(fingerprint=rows.get("fingerprint"), dim=int(rows["dim"]) if "dim" in rows else None)

    @staticmethod
    def _row_to_record(row: tuple[object, ...]) -> Record:
        (
            int_id,
            tracklet_id,
            identity,
            camera,
            platform,
            session,
            num_frames,
            metadata,
            created_at,
            fingerprint,
            descriptor,
            content_hash,
        ) = row
        return Record(
            tracklet_id=str(tracklet_id),
            identity=str(identity),
            camera=None if camera is None else str(camera),
            platform=None if platform is None else str(platform),  # type: ignore[arg-type]
            session=None if session is None else str(session),
            num_frames=int(num_frames),  # type: ignore[arg-type]
            metadata=json.loads(str(metadata)),
            created_at=float(created_at),  # type: ignore[arg-type]
            fingerprint=str(fingerprint),
            descriptor=descriptor_from_bytes(bytes(descriptor)),  # type: ignore[arg-type]
            content_hash=str(content_hash),
            int_id=int(int_id),  # type: ignore[arg-type]
        )

    # ---- writes -------------------------------------------------------------------------
    def _put_batch(self, records: list[Record], frames: dict[str, list[bytes]]) -> list[PutResult]:
        with self._transaction() as conn:
            check_against_info(self._info(conn), records)
            results: list[PutResult | None] = [None] * len(records)
            new: list[int] = []
            for i, record in enumerate(records):
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM tracklets WHERE tracklet_id = ?", (record.tracklet_id,)
                ).fetchone()
                if row is None:
                    new.append(i)
                else:
                    # Raises on conflict; the transaction rolls back, nothing is written.
                    results[i] = resolve_existing(self._row_to_record(row), record)
            if new:
                next_id = int(conn.execute("SELECT value FROM meta WHERE key = 'next_int_id'").fetchone()[0])
                for offset, i in enumerate(new):
                    stored = with_int_id(records[i], next_id + offset)
                    conn.execute(
                        f"INSERT INTO tracklets({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            stored.int_id,
                            stored.tracklet_id,
                            stored.identity,
                            stored.camera,
                            stored.platform,
                            stored.session,
                            stored.num_frames,
                            encode_metadata(stored.metadata),
                            stored.created_at,
                            stored.fingerprint,
                            descriptor_to_bytes(stored.descriptor),
                            stored.content_hash,
                        ),
                    )
                    frame_list = frames.get(stored.tracklet_id)
                    if frame_list:
                        self._write_frames(conn, stored.int_id, frame_list)  # type: ignore[arg-type]
                    results[i] = PutResult(record=stored, created=True)
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'next_int_id'", (str(next_id + len(new)),)
                )
                self._append_changes(
                    conn, "add", [(records[i].tracklet_id, next_id + offset) for offset, i in enumerate(new)]
                )
                first = records[new[0]]
                conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('fingerprint', ?), ('dim', ?)",
                    (first.fingerprint, str(first.dim)),
                )
        return [r for r in results if r is not None]

    def _append_changes(self, conn: sqlite3.Connection, op: ChangeOp, items: Sequence[tuple[str, int]]) -> None:
        """Append one change per (tracklet id, int id) inside the caller's write transaction, and
        trim the feed to the newest ``change_retention`` changes."""
        if not items:
            return
        last = int(conn.execute("SELECT value FROM meta WHERE key = 'change_seq'").fetchone()[0])
        conn.executemany(
            "INSERT INTO changes(seq, op, tracklet_id, int_id) VALUES (?, ?, ?, ?)",
            [(last + 1 + n, op, tid, int_id) for n, (tid, int_id) in enumerate(items)],
        )
        head = last + len(items)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'change_seq'", (str(head),))
        conn.execute("DELETE FROM changes WHERE seq <= ?", (head - self._retention,))

    @staticmethod
    def _write_frames(conn: sqlite3.Connection, int_id: int, frames: list[bytes]) -> None:
        conn.execute("DELETE FROM frames WHERE int_id = ?", (int_id,))
        conn.executemany(
            "INSERT INTO frames(int_id, seq, data) VALUES (?, ?, ?)",
            [(int_id, seq, sqlite3.Binary(data)) for seq, data in enumerate(frames)],
        )

    def delete(self, tracklet_id: str) -> bool:
        with self._transaction() as conn:
            row = conn.execute("SELECT int_id FROM tracklets WHERE tracklet_id = ?", (tracklet_id,)).fetchone()
            if row is None:
                return False
            # frames go with the tracklet through ON DELETE CASCADE
            conn.execute("DELETE FROM tracklets WHERE int_id = ?", (row[0],))
            self._append_changes(conn, "remove", [(tracklet_id, int(row[0]))])
            return True

    def delete_identity(self, identity: str) -> list[str]:
        with self._transaction() as conn:
            rows = [
                (str(tid), int(int_id))
                for tid, int_id in conn.execute(
                    "SELECT tracklet_id, int_id FROM tracklets WHERE identity = ? ORDER BY int_id", (identity,)
                )
            ]
            conn.execute("DELETE FROM tracklets WHERE identity = ?", (identity,))
            self._append_changes(conn, "remove", rows)
        return sorted(tid for tid, _ in rows)

    def put_frames(self, tracklet_id: str, frames: Sequence[bytes]) -> None:
        frame_list = validate_frames(frames)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT int_id FROM tracklets WHERE tracklet_id = ?", (tracklet_id,)
            ).fetchone()
            if row is None:
                raise TrackletNotFound(tracklet_id)
            self._write_frames(conn, int(row[0]), frame_list)

    def _replace_descriptors(self, fingerprint: str, items: dict[str, np.ndarray], dim: int | None) -> int:
        with self._transaction() as conn:
            rows = [
                (str(tid), int(int_id))
                for tid, int_id in conn.execute("SELECT tracklet_id, int_id FROM tracklets ORDER BY int_id")
            ]
            check_replacement_coverage({tid for tid, _ in rows}, set(items))
            conn.executemany(
                "UPDATE tracklets SET descriptor = ?, fingerprint = ? WHERE tracklet_id = ?",
                [(descriptor_to_bytes(vec), fingerprint, tid) for tid, vec in items.items()],
            )
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('fingerprint', ?)", (fingerprint,))
            if dim is None:
                # No tracklets: the next write fixes the dimension again.
                conn.execute("DELETE FROM meta WHERE key = 'dim'")
            else:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dim', ?)", (str(dim),))
            # Every record changed in place: readers drop their copy and read the new one.
            self._append_changes(conn, "remove", rows)
            self._append_changes(conn, "add", rows)
        return len(items)

    # ---- change feed --------------------------------------------------------------------
    def _changes_since(self, seq: int, limit: int) -> tuple[list[Change], int | None, int]:
        # The page, the oldest retained change and the head agree.
        rows, oldest_row, head_row = self._read_together(
            ("SELECT seq, op, tracklet_id, int_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)),
            ("SELECT MIN(seq) FROM changes", ()),
            ("SELECT value FROM meta WHERE key = 'change_seq'", ()),
        )
        oldest, head = oldest_row[0][0], head_row[0][0]
        changes = [Change(int(s), str(op), str(tid), int(i)) for s, op, tid, i in rows]  # type: ignore[arg-type]
        return changes, None if oldest is None else int(oldest), int(head)

    def change_head(self) -> int:
        return int(self._read("SELECT value FROM meta WHERE key = 'change_seq'")[0][0])  # type: ignore[arg-type]

    # ---- jobs ---------------------------------------------------------------------------
    def create_job(self, job: Job) -> None:
        check_job(job)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone():
                raise JobExists(job.id)
            conn.execute("INSERT INTO jobs(id, created_at, version, finished, data) VALUES (?, ?, ?, ?, ?)",
                         (job.id, job.created_at, job.version, int(job.finished), job.to_json()))

    def get_job(self, job_id: str) -> Job | None:
        rows = self._read("SELECT data FROM jobs WHERE id = ?", (job_id,))
        return Job.from_json(rows[0][0]) if rows else None  # type: ignore[arg-type]

    def list_jobs(self, limit: int = 100, unfinished: bool = False) -> list[Job]:
        check_jobs_limit(limit)
        where = "WHERE finished = 0 " if unfinished else ""
        rows = self._read(f"SELECT data FROM jobs {where}ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
        return [Job.from_json(r[0]) for r in rows]  # type: ignore[arg-type]

    def replace_job(self, job: Job) -> bool:
        check_job(job)
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE jobs SET version = ?, finished = ?, data = ? WHERE id = ? AND version = ?",
                                  (job.version, int(job.finished), job.to_json(), job.id, job.version - 1))
            return cursor.rowcount == 1

    def delete_finished_jobs(self, finished_before: float, limit: int = 1000) -> int:
        check_jobs_limit(limit)
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished = 1 "
                "AND json_extract(data, '$.updated_at') < ? ORDER BY json_extract(data, '$.updated_at') LIMIT ?)",
                (finished_before, limit))
            return cursor.rowcount

    # ---- derived data -------------------------------------------------------------------
    def put_blob(self, name: str, data: bytes) -> None:
        check_blob_name(name)
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO blobs(name, data) VALUES (?, ?)", (name, bytes(data)))

    def get_blob(self, name: str) -> bytes | None:
        check_blob_name(name)
        rows = self._read("SELECT data FROM blobs WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None  # type: ignore[arg-type]

    def delete_blob(self, name: str) -> None:
        check_blob_name(name)
        with self._transaction() as conn:
            conn.execute("DELETE FROM blobs WHERE name = ?", (name,))

    # ---- reads --------------------------------------------------------------------------
    def get(self, tracklet_id: str) -> Record | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM tracklets WHERE tracklet_id = ?", (tracklet_id,))
        return self._row_to_record(rows[0]) if rows else None

    def get_identity(self, identity: str) -> list[Record]:
        rows = self._read(f"SELECT {_COLUMNS} FROM tracklets WHERE identity = ? ORDER BY int_id", (identity,))
        return [self._row_to_record(r) for r in rows]

    def get_frames(self, tracklet_id: str) -> list[bytes] | None:
        rows = self._read(
            "SELECT f.data FROM frames f JOIN tracklets t ON t.int_id = f.int_id "
            "WHERE t.tracklet_id = ? ORDER BY f.seq",
            (tracklet_id,),
        )
        return [bytes(r[0]) for r in rows] or None  # type: ignore[arg-type]

    def list_identities(self, offset: int = 0, limit: int = 100) -> tuple[list[tuple[str, int]], int]:
        check_page(offset, limit)
        # The page and the total agree.
        page, total_row = self._read_together(
            ("SELECT identity, COUNT(*) FROM tracklets GROUP BY identity ORDER BY identity LIMIT ? OFFSET ?",
             (limit, offset)),
            ("SELECT COUNT(DISTINCT identity) FROM tracklets", ()),
        )
        total = total_row[0][0]
        return [(str(i), int(n)) for i, n in page], int(total)

    def count_tracklets(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM tracklets")[0][0])  # type: ignore[arg-type]

    def count_identities(self) -> int:
        return int(self._read("SELECT COUNT(DISTINCT identity) FROM tracklets")[0][0])  # type: ignore[arg-type]

    def iter_records(self, batch: int = 1000, after: int = -1) -> Iterator[Record]:
        check_batch_size(batch)
        check_after(after)
        return self._iter_records(batch, after)

    def _iter_records(self, batch: int, after: int) -> Iterator[Record]:
        last = after
        while True:
            # Keyset paging on int_id; the lock is released between batches.
            rows = self._read(
                f"SELECT {_COLUMNS} FROM tracklets WHERE int_id > ? ORDER BY int_id LIMIT ?", (last, batch)
            )
            if not rows:
                return
            for row in rows:
                yield self._row_to_record(row)
            last = int(rows[-1][0])  # type: ignore[arg-type]

    def int_ids(self) -> np.ndarray:
        rows = self._read("SELECT int_id FROM tracklets ORDER BY int_id")
        return np.array([r[0] for r in rows], dtype=np.int64)

    def info(self) -> StoreInfo:
        with self._lock:
            self._check_open()
            return self._info(self._conn)

    # ---- lifecycle ----------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            self._read("SELECT 1")
        except (sqlite3.Error, StoreError):
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
