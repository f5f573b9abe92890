"""One behavioural suite for both stores: SQLite files and a real redis-server (tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from index.store import (
    Change,
    ChangesTrimmed,
    DimensionMismatch,
    FingerprintMismatch,
    InvalidRecord,
    Job,
    JobExists,
    Record,
    RedisStore,
    SchemaVersionError,
    SQLiteStore,
    Store,
    StoreUnavailable,
    TrackletConflict,
    TrackletNotFound,
    open_store,
)
from tests.conftest import RedisServer, free_port

DIM = 8


def make_record(
    tracklet_id: str,
    identity: str = "p1",
    *,
    dim: int = DIM,
    fingerprint: str = "fp-a",
    content_hash: str | None = None,
    seed: int | None = None,
    **kwargs: object,
) -> Record:
    rng = np.random.default_rng([zlib.crc32(tracklet_id.encode()), seed or 0])
    vec = rng.standard_normal(dim).astype(np.float32)
    vec /= np.linalg.norm(vec)
    return Record(
        tracklet_id=tracklet_id,
        identity=identity,
        num_frames=int(kwargs.pop("num_frames", 8)),  # type: ignore[call-overload]
        fingerprint=fingerprint,
        descriptor=vec,
        content_hash=content_hash or f"hash-{tracklet_id}",
        **kwargs,  # type: ignore[arg-type]
    )


Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> Opener:
    """Opens the same backing store again on each call (a new file per test / a new key prefix)."""
    if request.param == "sqlite":
        path = tmp_path / "gallery.db"
        return lambda: SQLiteStore(path)
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda: RedisStore(server.url, prefix=redis_prefix)


@pytest.fixture
def store(opener: Opener) -> Iterator[Store]:
    s = opener()
    yield s
    s.close()


def assert_same_record(a: Record, b: Record) -> None:
    for f in dataclasses.fields(Record):
        if f.name == "descriptor":
            assert a.descriptor.dtype == np.float32
            assert a.descriptor.tobytes() == b.descriptor.tobytes()
        else:
            assert getattr(a, f.name) == getattr(b, f.name), f.name


# ---- round trip ---------------------------------------------------------------------------------
def test_round_trip_every_field(store: Store) -> None:
    rec = make_record(
        "trk/ü 1",
        "Person:7",
        camera="cam-2",
        platform="aerial",
        session="s1",
        num_frames=17,
        metadata={"altitude_m": 80.5, "tags": ["a", "b"], "nested": {"pitch": 60}, "none": None},
        created_at=1_700_000_000.123456,
    )
    # Awkward floats must come back bit-exact, not via a text round trip.
    desc = np.array([np.float32(1e-38), -0.0, np.pi, -1.5e30, 1 / 3, 7, 0.1, -2], dtype=np.float32)
    rec = dataclasses.replace(rec, descriptor=desc)
    result = store.put(rec)
    assert result.created
    assert result.record.int_id is not None and result.record.int_id >= 1
    got = store.get("trk/ü 1")
    assert got is not None
    assert_same_record(got, result.record)
    assert got.descriptor.tobytes() == desc.astype("<f4").tobytes()
    minimal = make_record("t-min", camera=None, platform=None, session=None, metadata={})
    store.put(minimal)
    got_min = store.get("t-min")
    assert (
        got_min is not None
        and got_min.camera is None
        and got_min.platform is None
        and got_min.session is None
    )
    assert store.get("absent") is None
    info = store.info()
    assert info.fingerprint == "fp-a" and info.dim == DIM


def test_invalid_records_name_the_field() -> None:
    with pytest.raises(InvalidRecord, match="platform"):
        make_record("t", platform="satellite")  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord, match="metadata"):
        make_record("t", metadata={"x": object()})
    with pytest.raises(InvalidRecord, match="metadata"):
        make_record("t", metadata={"x": float("nan")})
    with pytest.raises(InvalidRecord, match="tracklet_id"):
        make_record("")
    with pytest.raises(InvalidRecord, match="num_frames"):
        make_record("t", num_frames=-1)
    with pytest.raises(InvalidRecord, match="descriptor"):
        dataclasses.replace(make_record("t"), descriptor=np.array([1.0, np.nan], dtype=np.float32))
    with pytest.raises(InvalidRecord, match="descriptor"):
        dataclasses.replace(make_record("t"), descriptor=np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(InvalidRecord, match="camera"):
        make_record("t", camera="")


# ---- idempotency and conflicts ------------------------------------------------------------------
def test_same_content_is_idempotent_and_different_content_conflicts(store: Store) -> None:
    first = store.put(make_record("t1", "p1", content_hash="h1"))
    again = store.put(make_record("t1", "p1", content_hash="h1", seed=99))
    assert not again.created
    assert again.record.int_id == first.record.int_id
    assert again.record.descriptor.tobytes() == first.record.descriptor.tobytes()
    with pytest.raises(TrackletConflict, match="t1"):
        store.put(make_record("t1", "p1", content_hash="h2"))
    with pytest.raises(TrackletConflict, match="identity"):
        store.put(make_record("t1", "p2", content_hash="h1"))
    got = store.get("t1")
    assert got is not None and got.content_hash == "h1" and got.identity == "p1"
    assert store.count_tracklets() == 1
    assert store.list_identities() == ([("p1", 1)], 1)


def test_put_many_returns_results_in_input_order(store: Store) -> None:
    store.put(make_record("b", "p1"))
    results = store.put_many([make_record("a", "p1"), make_record("b", "p1"), make_record("c", "p2")])
    assert [r.record.tracklet_id for r in results] == ["a", "b", "c"]
    assert [r.created for r in results] == [True, False, True]
    assert store.count_tracklets() == 3
    assert store.put_many([]) == []


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: make_record("stored", "p1", content_hash="other"), id="conflict-with-stored"),
        pytest.param(lambda: make_record("new-1", "p1"), id="duplicate-in-batch"),
        pytest.param(lambda: make_record("bad-fp", "p1", fingerprint="fp-b"), id="fingerprint"),
        pytest.param(lambda: make_record("bad-dim", "p1", dim=DIM + 1), id="dimension"),
        pytest.param(lambda: "not a record", id="not-a-record"),
    ],
)
def test_put_many_is_all_or_nothing(store: Store, bad: Callable[[], object]) -> None:
    store.put(make_record("stored", "p1"))
    batch = [make_record("new-1", "p9"), bad(), make_record("new-2", "p10")]
    with pytest.raises((TrackletConflict, FingerprintMismatch, DimensionMismatch, InvalidRecord)):
        store.put_many(batch)  # type: ignore[arg-type]
    assert store.count_tracklets() == 1
    assert store.get("new-1") is None and store.get("new-2") is None
    assert store.count_identities() == 1
    assert store.get_identity("p9") == []
    stored = store.get("stored")
    assert stored is not None and stored.content_hash == "hash-stored"


def test_fingerprint_and_dimension_are_fixed_by_first_write(store: Store) -> None:
    store.put(make_record("t1", fingerprint="ckpt-A"))
    with pytest.raises(FingerprintMismatch) as exc:
        store.put(make_record("t2", fingerprint="ckpt-B"))
    assert str(exc.value) == (
        "gallery was built with checkpoint ckpt-A; descriptor made with ckpt-B; re-embed with `sasreid reembed`"
    )
    with pytest.raises(DimensionMismatch, match=f"dimension {DIM}.*dimension {DIM + 4}"):
        store.put(make_record("t3", fingerprint="ckpt-A", dim=DIM + 4))
    # An idempotent retry made with another checkpoint is still a mismatch, not a silent success.
    with pytest.raises(FingerprintMismatch):
        store.put(make_record("t1", fingerprint="ckpt-B"))
    assert store.count_tracklets() == 1
    # Deleting everything does not unfix the gallery's checkpoint.
    store.delete("t1")
    with pytest.raises(FingerprintMismatch):
        store.put(make_record("t4", fingerprint="ckpt-B"))


# ---- identities ---------------------------------------------------------------------------------
def test_identity_sets_and_paging(store: Store) -> None:
    names = ["b", "B", "a", "a10", "a2", "é", "z"]
    records = []
    for i, name in enumerate(names):
        for j in range(i % 3 + 1):
            records.append(make_record(f"{name}-{j}", name))
    store.put_many(records)
    expected = sorted((n, i % 3 + 1) for i, n in enumerate(names))  # byte order: "B" < "a" < "é"
    assert [n for n, _ in expected] == sorted(names, key=lambda s: s.encode())
    page, total = store.list_identities(0, 100)
    assert page == expected and total == len(names)
    collected = []
    for offset in range(0, len(names), 3):
        page, total = store.list_identities(offset, 3)
        assert total == len(names)
        collected.extend(page)
    assert collected == expected
    assert store.list_identities(100, 5) == ([], len(names))
    assert store.count_identities() == len(names)
    assert store.count_tracklets() == len(records)
    got = store.get_identity("a2")
    assert [r.tracklet_id for r in got] == ["a2-0", "a2-1"]
    assert [r.int_id for r in got] == sorted(r.int_id for r in got)  # type: ignore[type-var]
    assert store.get_identity("nobody") == []
    with pytest.raises(InvalidRecord, match="offset"):
        store.list_identities(-1, 10)
    with pytest.raises(InvalidRecord, match="limit"):
        store.list_identities(0, 0)


def test_delete_and_delete_identity(store: Store) -> None:
    store.put_many(
        [make_record("x1", "X"), make_record("x2", "X"), make_record("y1", "Y"), make_record("z1", "Z")]
    )
    store.put_frames("x1", [b"f0"])
    assert store.delete("y1") is True
    assert store.delete("y1") is False
    assert store.get("y1") is None
    assert store.list_identities() == ([("X", 2), ("Z", 1)], 2)
    assert store.delete_identity("X") == ["x1", "x2"]
    assert store.get("x1") is None and store.get("x2") is None
    assert store.get_frames("x1") is None
    assert store.get_identity("X") == []
    assert store.delete_identity("X") == []
    assert store.list_identities() == ([("Z", 1)], 1)
    assert store.count_tracklets() == 1
    assert [r.tracklet_id for r in store.iter_records()] == ["z1"]
    # A deleted id can be stored again (with any content): it gets a new int id.
    again = store.put(make_record("x1", "X2", content_hash="new"))
    assert again.created


def test_frames(store: Store) -> None:
    frames = [b"\x00\xff" * 10, b"", b"jpeg-bytes"]
    store.put(make_record("t1"), frames=frames)
    assert store.get_frames("t1") == frames
    store.put_frames("t1", [b"replacement"])
    assert store.get_frames("t1") == [b"replacement"]
    store.put(make_record("t2"))
    assert store.get_frames("t2") is None
    assert store.get_frames("missing") is None
    with pytest.raises(TrackletNotFound, match="'missing' is not stored"):
        store.put_frames("missing", [b"x"])
    with pytest.raises(InvalidRecord, match="frames"):
        store.put_frames("t1", [])
    with pytest.raises(InvalidRecord, match=r"frames\[1\]"):
        store.put_frames("t1", [b"ok", "text"])  # type: ignore[list-item]
    assert store.get_frames("t1") == [b"replacement"]
    # An idempotent re-put does not touch the kept frames.
    store.put(make_record("t1"), frames=[b"other"])
    assert store.get_frames("t1") == [b"replacement"]
    store.delete("t1")
    assert store.get_frames("t1") is None


# ---- int ids ------------------------------------------------------------------------------------
def test_int_ids_are_stable_and_never_reused(opener: Opener) -> None:
    store = opener()
    ids = {
        r.record.tracklet_id: r.record.int_id
        for r in store.put_many([make_record(f"t{i}") for i in range(5)])
    }
    assert len(set(ids.values())) == 5
    assert store.delete("t4")  # the newest: a MAX()+1 scheme would hand its id out again
    assert store.delete("t1")
    new = store.put(make_record("t5")).record.int_id
    assert new is not None and new > max(ids.values())  # type: ignore[type-var]
    store.close()
    store = opener()
    try:
        assert store.get("t0").int_id == ids["t0"]  # type: ignore[union-attr]
        newer = store.put(make_record("t6")).record.int_id
        assert newer is not None and newer > new
        assert store.int_ids().tolist() == sorted([ids["t0"], ids["t2"], ids["t3"], new, newer])
        assert store.int_ids().dtype == np.int64
    finally:
        store.close()


# ---- derived data (blobs) -----------------------------------------------------------------------
def test_blobs_round_trip_replace_and_survive_reopen(opener: Opener) -> None:
    store = opener()
    try:
        assert store.get_blob("graph/k30") is None
        big = np.random.default_rng(0).bytes(3 * 1024 * 1024)  # the size class of a real graph
        store.put_blob("graph/k30", big)
        store.put_blob("other", b"x")
        assert store.get_blob("graph/k30") == big
        store.put_blob("graph/k30", b"\x00second")  # replaces, NUL bytes intact
        assert store.get_blob("graph/k30") == b"\x00second"
        assert store.count_tracklets() == 0 and store.change_head() == 0  # not records, not changes
        for bad in ("", "x" * 201, 3):
            with pytest.raises(InvalidRecord):
                store.put_blob(bad, b"")  # type: ignore[arg-type]
    finally:
        store.close()
    store = opener()
    try:
        assert store.get_blob("graph/k30") == b"\x00second"
        store.delete_blob("graph/k30")
        store.delete_blob("never-written")
        assert store.get_blob("graph/k30") is None and store.get_blob("other") == b"x"
    finally:
        store.close()


def test_iter_records_in_int_id_order_across_batches(store: Store) -> None:
    store.put_many([make_record(f"t{i:03d}", f"p{i % 7}") for i in range(53)])
    store.delete("t010")
    for batch in (1, 7, 1000):
        records = list(store.iter_records(batch=batch))
        assert len(records) == 52
        ints = [r.int_id for r in records]
        assert ints == sorted(ints)  # type: ignore[type-var]
        assert ints == store.int_ids().tolist()
    with pytest.raises(InvalidRecord, match="batch"):
        store.iter_records(batch=0)


def test_iter_records_after_resumes_and_sees_later_records(store: Store) -> None:
    """A re-embedding job pages through the gallery with ``after`` = the last int id it saw:
    records deleted behind it are gone, records stored meanwhile come after it."""
    store.put_many([make_record(f"t{i:02d}") for i in range(10)])
    first = list(itertools.islice(store.iter_records(batch=3), 4))
    cursor = first[-1].int_id
    assert cursor is not None
    store.delete("t01")  # behind the cursor
    store.delete("t07")  # ahead of it
    store.put(make_record("late"))
    rest = [r.tracklet_id for r in store.iter_records(batch=3, after=cursor)]
    assert rest == ["t04", "t05", "t06", "t08", "t09", "late"]
    assert list(store.iter_records(after=max(store.int_ids().tolist()))) == []
    for bad in (-2, 1.5, True):
        with pytest.raises(InvalidRecord, match="after"):
            store.iter_records(after=bad)  # type: ignore[arg-type]


# ---- re-embedding -------------------------------------------------------------------------------
def test_replace_descriptors_switches_fingerprint_atomically(store: Store) -> None:
    store.put_many([make_record(f"t{i}", fingerprint="old") for i in range(4)])
    before = {r.tracklet_id: r for r in store.iter_records()}
    rng = np.random.default_rng(0)
    new = {tid: rng.standard_normal(DIM * 2).astype(np.float32) for tid in before}
    with pytest.raises(InvalidRecord, match="no new descriptor"):
        store.replace_descriptors("new", {k: v for k, v in new.items() if k != "t0"})
    with pytest.raises(InvalidRecord, match="not stored"):
        store.replace_descriptors("new", {**new, "ghost": new["t0"]})
    with pytest.raises(DimensionMismatch):
        store.replace_descriptors("new", {**new, "t0": new["t0"][:DIM]})
    assert store.info().fingerprint == "old"
    assert all(
        r.descriptor.tobytes() == before[r.tracklet_id].descriptor.tobytes() for r in store.iter_records()
    )

    assert store.replace_descriptors("new", new) == 4
    assert store.info().fingerprint == "new" and store.info().dim == DIM * 2
    for r in store.iter_records():
        assert r.fingerprint == "new"
        assert r.descriptor.tobytes() == new[r.tracklet_id].tobytes()
        assert r.int_id == before[r.tracklet_id].int_id
        assert r.content_hash == before[r.tracklet_id].content_hash
    with pytest.raises(FingerprintMismatch):
        store.put(make_record("t9", fingerprint="old"))
    store.put(make_record("t9", fingerprint="new", dim=DIM * 2))


# ---- persistence --------------------------------------------------------------------------------
def test_sqlite_persists_across_reopen_and_checks_schema(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with SQLiteStore(path) as store:
        written = store.put_many([make_record(f"t{i}", f"p{i % 3}", camera="c1") for i in range(10)])
        store.put_frames("t3", [b"a", b"b"])
        store.delete("t9")
    with SQLiteStore(path) as store:
        assert store.count_tracklets() == 9
        for r in written[:9]:
            got = store.get(r.record.tracklet_id)
            assert got is not None
            assert_same_record(got, r.record)
        assert store.get_frames("t3") == [b"a", b"b"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="99"):
        SQLiteStore(path)


def test_redis_survives_kill_9_with_appendonly(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory(appendonly=True, appendfsync="always")
    store = RedisStore(server.url, prefix="crash:")
    acked = [r.record for r in store.put_many([make_record(f"b{i}", f"p{i % 4}") for i in range(40)])]
    for i in range(10):
        acked.append(store.put(make_record(f"s{i}", "single"), frames=[f"frame{i}".encode()]).record)
    assert store.delete("b0")
    assert store.delete_identity("p1") == sorted(f"b{i}" for i in range(40) if i % 4 == 1)
    expected = {r.tracklet_id: r for r in acked if r.tracklet_id != "b0" and r.identity != "p1"}
    store.close()

    server.kill()
    with pytest.raises(StoreUnavailable):
        RedisStore(server.url, prefix="crash:")
    server.restart()

    with RedisStore(server.url, prefix="crash:") as store:
        assert store.count_tracklets() == len(expected)
        for tid, rec in expected.items():
            got = store.get(tid)
            assert got is not None, tid
            assert_same_record(got, rec)
        assert store.get_frames("s3") == [b"frame3"]
        assert store.get("b0") is None and store.get_identity("p1") == []
        assert store.list_identities()[1] == 4  # p0, p2, p3, single
        newer = store.put(make_record("after")).record.int_id
        assert newer is not None and newer > max(r.int_id for r in acked)  # type: ignore[type-var]


def test_redis_unreachable_is_reported() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable, match="unavailable"):
        RedisStore(url)


def test_redis_schema_version_check(redis_server: RedisServer, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.hset(f"{redis_prefix}meta", "schema", 99)
    client.close()
    with pytest.raises(SchemaVersionError, match="99"):
        RedisStore(redis_server.url, prefix=redis_prefix)


def test_redis_key_layout_is_under_the_prefix(redis_server: RedisServer, redis_prefix: str) -> None:
    with RedisStore(redis_server.url, prefix=redis_prefix) as store:
        store.put(make_record("t1", "p1"), frames=[b"x"])
    client = redis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{redis_prefix}*"))
    client.close()
    suffixes = [k[len(redis_prefix) :] for k in keys]
    assert suffixes == sorted(
        ["meta", "next_int_id", "tracklets", "t:t1", "i:p1", "identities", "f:t1", "change_seq", "changes"]
    )


# ---- concurrency --------------------------------------------------------------------------------
def test_concurrent_writers_from_threads(store: Store) -> None:
    errors: list[BaseException] = []
    created: list[tuple[str, int, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def worker(w: int) -> None:
        try:
            barrier.wait()
            for i in range(15):
                # Every worker also races to create the same "shared-i" tracklets.
                for tid in (f"w{w}-{i}", f"shared-{i}"):
                    res = store.put(make_record(tid, f"id{i % 5}"))
                    with lock:
                        created.append((tid, res.record.int_id, res.created))  # type: ignore[arg-type]
            store.delete(f"w{w}-0")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.count_tracklets() == 4 * 14 + 15
    for i in range(15):
        claims = [(iid, c) for tid, iid, c in created if tid == f"shared-{i}"]
        assert sum(c for _, c in claims) == 1, claims  # exactly one writer created it
        assert len({iid for iid, _ in claims}) == 1  # and all saw the same int id
    ids = store.int_ids()
    assert len(np.unique(ids)) == len(ids)
    assert sum(n for _, n in store.list_identities(0, 100)[0]) == store.count_tracklets()


# ---- opening ------------------------------------------------------------------------------------
def test_open_store_urls(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    abs_path = tmp_path / "abs" / "g.db"
    with open_store(f"sqlite:///{abs_path}") as s:
        assert isinstance(s, SQLiteStore) and s.path == abs_path
    assert abs_path.exists()
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/g.db") as s:
        assert isinstance(s, SQLiteStore) and not s.path.is_absolute()
    assert (tmp_path / "rel" / "g.db").exists()
    with open_store(None, default_sqlite_path=tmp_path / "default.db") as s:
        assert isinstance(s, SQLiteStore) and s.ping()
    with open_store(redis_server.url, redis_prefix="open-test:") as s:
        assert isinstance(s, RedisStore) and s.ping()
    for bad in ("postgres://x/y", "gallery.db", "sqlite://", "sqlite:///"):
        with pytest.raises(ValueError, match="accepted"):
            open_store(bad)
    with pytest.raises(ValueError, match="default_sqlite_path"):
        open_store(None)


def test_ping_and_close(opener: Opener) -> None:
    store = opener()
    assert store.ping()
    store.close()
    if isinstance(store, SQLiteStore):
        assert not store.ping()


# ---- a writer killed mid-way ----------------------------------------------------------------------
_WRITER = """
import sys
import numpy as np
from index.store import Record, open_store

url, prefix = sys.argv[1], sys.argv[2]
store = open_store(url, redis_prefix=prefix)
rng = np.random.default_rng(0)
b = 0
while True:
    store.put_many([
        Record(tracklet_id=f"b{b}-{i}", identity=f"p{(b * 7 + i) % 13}", num_frames=1, fingerprint="fp",
               descriptor=rng.standard_normal(64).astype(np.float32), content_hash=f"h{b}-{i}")
        for i in range(20)
    ])
    print(b, flush=True)
    b += 1
"""


def test_writer_killed_mid_write_leaves_whole_batches_only(opener: Opener, tmp_path: Path) -> None:
    store = opener()
    if isinstance(store, SQLiteStore):
        url, prefix = f"sqlite:///{store.path}", "-"
    else:
        url, prefix = store.url, store.prefix  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, url, prefix],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        acked = -1
        assert proc.stdout is not None
        while acked < 15:  # let it commit some batches, then kill it wherever it is
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode() if proc.stderr else "writer exited"
            acked = int(line)
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    store.close()
    store = opener()
    try:
        records = list(store.iter_records())
        per_batch: dict[str, int] = {}
        for r in records:
            per_batch[r.tracklet_id.split("-")[0]] = per_batch.get(r.tracklet_id.split("-")[0], 0) + 1
        assert set(per_batch.values()) == {20}, per_batch  # no half-written batch
        assert all(f"b{b}" in per_batch for b in range(acked + 1))  # every acknowledged batch is there
        assert store.count_tracklets() == len(records) == len(store.int_ids())
        # The feed committed with the data: one add per stored record, none for anything else.
        adds = {(c.tracklet_id, c.int_id) for c in all_changes(store) if c.op == "add"}
        assert adds == {(r.tracklet_id, r.int_id) for r in records}
        page, total = store.list_identities(0, 1000)
        assert total == store.count_identities() == len({r.identity for r in records})
        assert sum(n for _, n in page) == len(records)
        for name, n in page:
            assert len(store.get_identity(name)) == n
    finally:
        store.close()


# ---- change feed --------------------------------------------------------------------------------
def all_changes(store: Store, limit: int = 7) -> list[Change]:
    """The whole retained feed, read ``limit`` at a time (bounded by the head)."""
    out: list[Change] = []
    position = 0
    for _ in range(store.change_head() + 1):
        batch, position = store.changes_since(position, limit)
        if not batch:
            break
        out.extend(batch)
    return out


def replay(changes: list[Change]) -> dict[str, int]:
    """Tracklet id -> int id after applying the feed in order."""
    state: dict[str, int] = {}
    for c in changes:
        if c.op == "add":
            state[c.tracklet_id] = c.int_id
        elif state.get(c.tracklet_id) == c.int_id:
            del state[c.tracklet_id]
    return state


def test_change_feed_records_every_write_in_order(store: Store) -> None:
    assert store.change_head() == 0
    assert store.changes_since(0) == ([], 0)
    a = store.put(make_record("a", "p1"), frames=[b"f"]).record
    assert store.put(make_record("a", "p1")).created is False  # idempotent re-put: no change
    batch = [
        r.record
        for r in store.put_many([make_record("b", "p2"), make_record("c", "p2"), make_record("a", "p1")])
    ]
    store.put_frames("b", [b"x"])  # frames are not part of the feed
    assert store.delete("a")
    assert not store.delete("a")  # nothing deleted: nothing recorded
    assert store.delete_identity("p2") == ["b", "c"]
    assert store.delete_identity("nobody") == []
    d = store.put(make_record("a", "p3", content_hash="other")).record  # same id re-enrolled: new int id
    got = all_changes(store, limit=2)
    assert [(c.seq, c.op, c.tracklet_id, c.int_id) for c in got] == [
        (1, "add", "a", a.int_id),
        (2, "add", "b", batch[0].int_id),
        (3, "add", "c", batch[1].int_id),
        (4, "remove", "a", a.int_id),
        (5, "remove", "b", batch[0].int_id),
        (6, "remove", "c", batch[1].int_id),
        (7, "add", "a", d.int_id),
    ]
    assert store.change_head() == 7
    page, last = store.changes_since(2, limit=3)
    assert [c.seq for c in page] == [3, 4, 5] and last == 5
    assert store.changes_since(7) == ([], 7)
    assert replay(got) == {r.tracklet_id: r.int_id for r in store.iter_records()}

    # A descriptor replacement changes every record in place: a remove then an add of each.
    new = {r.tracklet_id: make_record(r.tracklet_id, dim=DIM * 2).descriptor for r in store.iter_records()}
    store.replace_descriptors("fp-b", new)
    tail, _ = store.changes_since(7)
    assert [(c.op, c.tracklet_id, c.int_id) for c in tail] == [
        ("remove", "a", d.int_id),
        ("add", "a", d.int_id),
    ]


def test_failed_writes_append_no_changes(store: Store) -> None:
    store.put(make_record("a"))
    head = store.change_head()
    with pytest.raises(TrackletConflict):
        store.put_many([make_record("b"), make_record("a", content_hash="different")])
    with pytest.raises(FingerprintMismatch):
        store.put(make_record("c", fingerprint="fp-other"))
    with pytest.raises(TrackletNotFound):
        store.put_frames("ghost", [b"x"])
    with pytest.raises(InvalidRecord):
        store.replace_descriptors("fp-b", {})  # does not cover "a"
    assert store.change_head() == head
    assert store.get("b") is None


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_changes_since_rejects_bad_positions(store: Store, bad: object) -> None:
    with pytest.raises(InvalidRecord, match="position"):
        store.changes_since(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -3, True, 100_001, None])
def test_changes_since_rejects_bad_limits(store: Store, bad: object) -> None:
    with pytest.raises(InvalidRecord, match="limit"):
        store.changes_since(0, bad)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "redis"])
def small_feed(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> Iterator[Store]:
    """A store that keeps only the newest 5 changes."""
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "g.db", change_retention=5)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, prefix=redis_prefix, change_retention=5)
    yield s
    s.close()


def test_feed_is_trimmed_and_a_reader_that_fell_behind_is_told(small_feed: Store) -> None:
    store = small_feed
    store.put_many([make_record(f"t{i}") for i in range(8)])  # one write of 8 > retention
    assert store.change_head() == 8
    assert [c.seq for c in all_changes_from(store, 3)] == [4, 5, 6, 7, 8]  # oldest kept is 4
    with pytest.raises(ChangesTrimmed, match="older than the retained window") as caught:
        store.changes_since(2)  # change 3 is gone
    assert (caught.value.position, caught.value.oldest, caught.value.head) == (2, 4, 8)
    store.delete("t0")
    store.delete("t1")
    assert [c.seq for c in all_changes_from(store, 5)] == [6, 7, 8, 9, 10]
    with pytest.raises(ChangesTrimmed):
        store.changes_since(4)
    assert store.changes_since(10) == ([], 10)  # up to date: never behind, whatever is trimmed
    with pytest.raises(ChangesTrimmed, match="past the feed's head"):
        store.changes_since(11)  # a position from another (replaced) store


def all_changes_from(store: Store, position: int) -> list[Change]:
    changes, _ = store.changes_since(position, 1000)
    return changes


def test_feed_under_concurrent_writers_is_gapless_and_replays_to_the_contents(store: Store) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(w: int) -> None:
        try:
            barrier.wait()
            for i in range(12):
                store.put(make_record(f"w{w}-{i}", f"id{i % 3}"))
                store.put(make_record(f"shared-{i}", "shared"))  # the others race for the same ids
                if i % 4 == 3:
                    store.delete(f"w{w}-{i - 1}")
            store.delete_identity(f"id{w % 3}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    changes = all_changes(store, limit=50)
    assert [c.seq for c in changes] == list(range(1, store.change_head() + 1))  # in commit order, no gaps
    assert replay(changes) == {r.tracklet_id: r.int_id for r in store.iter_records()}
    assert (
        sum(c.op == "add" and c.tracklet_id.startswith("shared") for c in changes) == 12
    )  # one per creation


def test_version_1_stores_are_upgraded_to_the_feed(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    path = tmp_path / "v1.db"
    with SQLiteStore(path) as store:
        store.put(make_record("old"))
    conn = sqlite3.connect(path)  # make it a version 1 file: no feed at all
    conn.execute("DROP TABLE changes")
    conn.execute("DELETE FROM meta WHERE key = 'change_seq'")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        assert store.get("old") is not None and store.change_head() == 0
        new = store.put(make_record("new")).record
        assert store.changes_since(0) == ([Change(1, "add", "new", new.int_id)], 1)  # type: ignore[arg-type]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.hset(f"{redis_prefix}meta", "schema", 1)
        with RedisStore(redis_server.url, prefix=redis_prefix) as store:
            assert store.change_head() == 0
        assert int(client.hget(f"{redis_prefix}meta", "schema")) == 2  # type: ignore[arg-type]
    finally:
        client.close()


# ---- jobs -----------------------------------------------------------------------------------------
def test_jobs_round_trip_list_newest_first_and_survive_reopen(opener: Opener) -> None:
    store = opener()
    try:
        assert store.get_job("j1") is None and store.list_jobs() == []
        first = Job(id="j1", kind="import", created_at=100.0, updated_at=100.0, params={"source": "a.jsonl"})
        store.create_job(first)
        store.create_job(Job(id="j2", kind="import", created_at=200.0, updated_at=200.0))
        with pytest.raises(JobExists):
            store.create_job(first)
        assert store.get_job("j1") == first
        assert [j.id for j in store.list_jobs()] == ["j2", "j1"]
        assert [j.id for j in store.list_jobs(limit=1)] == ["j2"]
        assert store.count_tracklets() == 0 and store.change_head() == 0  # not records, not changes
        for bad in (Job(id="a b", kind="import", created_at=1.0, updated_at=1.0),
                    Job(id="ok", kind="import", created_at=1.0, updated_at=1.0, state="lost"),  # type: ignore[arg-type]
                    Job(id="ok", kind="import", created_at=1.0, updated_at=1.0, params={"x": "y" * 70_000})):
            with pytest.raises(InvalidRecord):
                store.create_job(bad)
        with pytest.raises(InvalidRecord):
            store.list_jobs(limit=0)
    finally:
        store.close()
    store = opener()
    try:
        assert store.get_job("j1") == first
    finally:
        store.close()


def test_replace_job_is_a_compare_and_set_on_the_version(store: Store) -> None:
    job = Job(id="j", kind="import", created_at=1.0, updated_at=1.0)
    store.create_job(job)
    mine = job.next(state="running", owner="a", lease_until=50.0)
    theirs = job.next(state="running", owner="b", lease_until=60.0)
    assert store.replace_job(mine)
    assert not store.replace_job(theirs)  # b read version 0 too: it lost the race
    assert store.get_job("j") == mine
    done = mine.next(state="succeeded", progress={"records": 3})
    assert store.replace_job(done)
    assert not store.replace_job(mine.next(progress={"records": 1}))  # a stale writer cannot undo it
    assert store.get_job("j") == done and done.version == 2
    assert not store.replace_job(Job(id="gone", kind="import", created_at=1.0, updated_at=1.0, version=1))


def test_the_unfinished_listing_holds_only_queued_and_running_jobs(opener: Opener) -> None:
    store = opener()
    try:
        for i in range(4):
            store.create_job(Job(id=f"j{i}", kind="import", created_at=float(i), updated_at=float(i)))
        store.create_job(Job(id="born_done", kind="import", created_at=9.0, updated_at=9.0, state="failed"))
        j1 = store.get_job("j1")
        assert j1 is not None and store.replace_job(j1.next(state="running", owner="a"))
        j2 = store.get_job("j2")
        assert j2 is not None and store.replace_job(j2.next(state="succeeded"))
        assert [j.id for j in store.list_jobs(unfinished=True)] == ["j3", "j1", "j0"]
        assert [j.id for j in store.list_jobs(limit=2, unfinished=True)] == ["j3", "j1"]
        assert [j.id for j in store.list_jobs()] == ["born_done", "j3", "j2", "j1", "j0"]
    finally:
        store.close()
    store = opener()
    try:
        assert [j.id for j in store.list_jobs(unfinished=True)] == ["j3", "j1", "j0"]
    finally:
        store.close()


def test_finished_jobs_are_deleted_oldest_first_once_past_the_cutoff(opener: Opener) -> None:
    store = opener()
    try:
        for i in range(5):
            store.create_job(Job(id=f"j{i}", kind="import", created_at=float(i), updated_at=float(i)))
        store.create_job(Job(id="born_done", kind="import", created_at=5.0, updated_at=5.0, state="failed"))
        for i, finished_at in ((0, 40.0), (1, 10.0), (2, 30.0)):
            job = store.get_job(f"j{i}")
            assert job is not None and store.replace_job(job.next(state="succeeded", updated_at=finished_at))
        running = store.get_job("j3")
        assert running is not None and store.replace_job(running.next(state="running", owner="a", updated_at=1.0))
        assert store.delete_finished_jobs(finished_before=5.0) == 0  # strictly before: born_done stays
        assert store.delete_finished_jobs(finished_before=35.0, limit=2) == 2  # born_done (5), j1 (10)
        assert store.get_job("born_done") is None and store.get_job("j1") is None
        assert [j.id for j in store.list_jobs()] == ["j4", "j3", "j2", "j0"]
    finally:
        store.close()
    store = opener()  # what was deleted stays deleted; the rest is untouched
    try:
        assert store.delete_finished_jobs(finished_before=1e12) == 2  # j2, j0; never j3 (running), j4 (queued)
        assert [j.id for j in store.list_jobs()] == ["j4", "j3"]
        assert [j.id for j in store.list_jobs(unfinished=True)] == ["j4", "j3"]
        assert store.delete_finished_jobs(finished_before=1e12) == 0
        with pytest.raises(InvalidRecord):
            store.delete_finished_jobs(finished_before=1.0, limit=0)
    finally:
        store.close()


def test_of_many_concurrent_claims_of_one_job_exactly_one_wins(opener: Opener) -> None:
    setup = opener()
    try:
        setup.create_job(Job(id="j", kind="import", created_at=1.0, updated_at=1.0))
    finally:
        setup.close()
    stores = [opener() for _ in range(6)]
    wins: list[str] = []
    barrier = threading.Barrier(len(stores))

    def claim(i: int) -> None:
        job = stores[i].get_job("j")
        assert job is not None
        barrier.wait()
        if stores[i].replace_job(job.next(owner=f"w{i}", state="running")):
            wins.append(f"w{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert len(wins) == 1
        got = stores[0].get_job("j")
        assert got is not None and got.owner == wins[0] and got.version == 1
    finally:
        for s in stores:
            s.close()
