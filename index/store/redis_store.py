"""Redis store: the gallery's system of record when a Redis server is configured.

Key layout, every key under a configurable prefix ``P`` (default ``"sasreid:"``):

====================  ======  ==============================================================
key                   type    content
====================  ======  ==============================================================
``P meta``            hash    ``schema`` (int), ``fingerprint``, ``dim``: fixed by the first write
``P next_int_id``     string  last int id handed out (INCRBY; never decremented, ids never reused)
``P tracklets``       zset    member tracklet id, score int id (ordered iteration, counts)
``P t:<tracklet>``    hash    ``json`` (every field but the descriptor), ``descriptor`` (raw <f4)
``P i:<identity>``    set     tracklet ids of one identity
``P identities``      zset    identity names, all with score 0 so ZRANGE pages them in byte order
``P f:<tracklet>``    list    kept frames (encoded images), in order
``P change_seq``      string  head of the change feed (last sequence number handed out)
``P changes``         zset    the change feed: member ``"<seq> <op> <int id> <tracklet id>"``,
                              score seq; the newest ``change_retention`` are kept
``P jobs``            hash    job id -> the job's JSON (``index.store.job``)
``P jobs:created``    zset    job ids by creation time (newest-first listing)
``P jobs:open``       zset    the queued or running ones, by creation time
``P jobs:finished``   zset    the succeeded or failed ones, by the time they finished
``P blob:<name>``     string  derived data (``Store.put_blob``, e.g. the re-ranking graph)
====================  ======  ==============================================================

Writes are MULTI/EXEC transactions (a record, its identity-set membership and the indexes change
together or not at all, even if this client dies mid-call); where a write depends on what it read
(idempotency checks, last member of an identity, first write fixing the fingerprint) the keys read
are WATCHed and the transaction is retried if another client changed them. Int ids are reserved
with INCRBY just before MULTI, so an aborted attempt leaves a gap but never a reused id. A write is
acknowledged once EXEC returns; how durable that is depends on the server's persistence settings
(``appendonly yes`` with ``appendfsync always`` survives a kill -9 of the server).

Change feed: a write's change records are appended by a Lua script queued inside the same MULTI,
so they commit with the data or not at all. The script takes the sequence numbers from
``change_seq`` when EXEC runs, not before: numbers are then in commit order, and a reader that has
seen number n has seen every change below n (numbers reserved before MULTI could commit out of
order and a reader would skip the late one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

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
    InvalidRecord,
    JobExists,
    SchemaVersionError,
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

DEFAULT_PREFIX = "sasreid:"
# WATCH conflicts only happen when two clients touch the same tracklet/identity at once; this
# bound turns a livelock into an error instead of a hang.
_MAX_ATTEMPTS = 100
_READ_CHUNK = 500
# KEYS: change_seq, changes. ARGV: retention, op, then int id and tracklet id per change.
_APPEND_CHANGES = """
local n = (#ARGV - 2) / 2
local last = redis.call('INCRBY', KEYS[1], n)
for i = 1, n do
  local seq = last - n + i
  redis.call('ZADD', KEYS[2], seq, seq .. ' ' .. ARGV[2] .. ' ' .. ARGV[1 + 2 * i] .. ' ' .. ARGV[2 + 2 * i])
end
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
return last
"""

# KEYS: jobs hash, jobs:open zset, jobs:finished zset. ARGV: job id, expected version, new JSON,
# "1" when the new state is finished, its updated_at. Compare-and-set of one job.
_REPLACE_JOB = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if cjson.decode(current)['version'] ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
end
return 1
"""
# KEYS: jobs hash, jobs:created zset, jobs:open zset, jobs:finished zset. ARGV: job id,
# created_at, JSON, "1" when finished, updated_at. 0 when the id is taken.
_CREATE_JOB = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[4] ~= '1' then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
else
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
end
return 1
"""
# KEYS: jobs hash, jobs:created zset, jobs:finished zset. ARGV: finished before (exclusive),
# limit. Deletes the oldest finished jobs; returns how many.
_DELETE_FINISHED_JOBS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return 0 end
redis.call('HDEL', KEYS[1], unpack(ids))
redis.call('ZREM', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[3], unpack(ids))
return #ids
"""

T = TypeVar("T")


class RedisStore(Store):
    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = 30.0,
        change_retention: int = DEFAULT_CHANGE_RETENTION,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise InvalidRecord(f"prefix must be a non-empty string, got {prefix!r}")
        self._retention = check_retention(change_retention)
        self.url = url
        self.prefix = prefix
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=5.0,
            socket_timeout=socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        p = prefix.encode()
        self._p = p
        self._meta = p + b"meta"
        self._counter = p + b"next_int_id"
        self._tracklets = p + b"tracklets"
        self._identities = p + b"identities"
        self._change_seq = p + b"change_seq"
        self._changes = p + b"changes"
        self._jobs = p + b"jobs"
        self._jobs_created = p + b"jobs:created"
        self._jobs_open = p + b"jobs:open"
        self._jobs_finished = p + b"jobs:finished"
        try:
            with self._errors():
                schema = self._client.hget(self._meta, "schema")
        except BaseException:
            self._client.close()
            raise
        if schema is not None and int(schema) > SCHEMA_VERSION:
            self._client.close()
            raise SchemaVersionError(
                f"{url} prefix {prefix!r} has schema version {int(schema)}; "
                f"this package reads up to {SCHEMA_VERSION}"
            )
        if schema is not None and int(schema) < SCHEMA_VERSION:
            # Version 1 had no change feed; its keys start empty. Raising the stored version keeps
            # packages that write without feeding it from opening the store from now on.
            try:
                with self._errors():
                    self._client.hset(self._meta, "schema", SCHEMA_VERSION)
            except StoreReadOnly:
                pass  # a read-only replica: nothing is written through this client anyway
            except BaseException:
                self._client.close()
                raise

    # ---- keys and encoding --------------------------------------------------------------
    def _tkey(self, tracklet_id: str) -> bytes:
        return self._p + b"t:" + tracklet_id.encode()

    def _fkey(self, tracklet_id: str) -> bytes:
        return self._p + b"f:" + tracklet_id.encode()

    def _ikey(self, identity: str) -> bytes:
        return self._p + b"i:" + identity.encode()

    @staticmethod
    def _encode(record: Record) -> dict[str, bytes]:
        fields = {
            "int_id": record.int_id,
            "tracklet_id": record.tracklet_id,
            "identity": record.identity,
            "camera": record.camera,
            "platform": record.platform,
            "session": record.session,
            "num_frames": record.num_frames,
            "metadata": encode_metadata(record.metadata),
            "created_at": record.created_at,
            "fingerprint": record.fingerprint,
            "content_hash": record.content_hash,
        }
        return {
            "json": json.dumps(fields, separators=(",", ":")).encode(),
            "descriptor": descriptor_to_bytes(record.descriptor),
        }

    @staticmethod
    def _decode(row: dict[bytes, bytes]) -> Record:
        fields = json.loads(row[b"json"])
        return Record(
            tracklet_id=fields["tracklet_id"],
            identity=fields["identity"],
            camera=fields["camera"],
            platform=fields["platform"],
            session=fields["session"],
            num_frames=fields["num_frames"],
            metadata=json.loads(fields["metadata"]),
            created_at=fields["created_at"],
            fingerprint=fields["fingerprint"],
            content_hash=fields["content_hash"],
            descriptor=descriptor_from_bytes(row[b"descriptor"]),
            int_id=fields["int_id"],
        )

    @staticmethod
    def _decode_info(raw: dict[bytes, bytes]) -> StoreInfo:
        fp = raw.get(b"fingerprint")
        dim = raw.get(b"dim")
        return StoreInfo(
            fingerprint=None if fp is None else fp.decode(), dim=None if dim is None else int(dim)
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(f"redis at {self.url} is unavailable: {exc}") from exc
        except OutOfMemoryError as exc:
            # MULTI/EXEC with a refused command is discarded whole: nothing was applied.
            raise StoreFull(f"redis at {self.url} is over its maxmemory and refuses writes: {exc}") from exc
        except ReadOnlyError as exc:
            raise StoreReadOnly(f"redis at {self.url} is a read-only replica: {exc}") from exc
        except ResponseError as exc:
            if "MISCONF" in str(exc):
                raise StoreReadOnly(
                    f"redis at {self.url} refuses writes because it cannot persist (MISCONF): {exc}"
                ) from exc
            raise StoreError(f"redis at {self.url} refused the command: {exc}") from exc

    def _transact(self, body: Callable[[Any], T]) -> T:
        """Run ``body(pipe)`` (WATCH, read, MULTI, queue, EXEC) until no watched key changed under it."""
        with self._errors():
            for _ in range(_MAX_ATTEMPTS):
                with self._client.pipeline(transaction=True) as pipe:
                    try:
                        return body(pipe)
                    except WatchError:
                        continue
        raise StoreError(f"redis at {self.url}: gave up after {_MAX_ATTEMPTS} conflicting concurrent writes")

    def _queue_changes(self, pipe: Any, op: ChangeOp, items: Sequence[tuple[str, int]]) -> None:
        """Queue the feed append of ``items`` (tracklet id, int id) into the open MULTI."""
        if not items:
            return
        args: list[object] = [self._retention, op]
        for tracklet_id, int_id in items:
            args += [int(int_id), tracklet_id]
        pipe.eval(_APPEND_CHANGES, 2, self._change_seq, self._changes, *args)

    def _rows(self, keys: Sequence[bytes]) -> list[dict[bytes, bytes]]:
        """HGETALL of many keys, pipelined in chunks (empty dict for a missing key)."""
        out: list[dict[bytes, bytes]] = []
        for start in range(0, len(keys), _READ_CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for key in keys[start : start + _READ_CHUNK]:
                pipe.hgetall(key)
            out.extend(pipe.execute())
        return out

    # ---- writes -------------------------------------------------------------------------
    def _put_batch(self, records: list[Record], frames: dict[str, list[bytes]]) -> list[PutResult]:
        tkeys = [self._tkey(r.tracklet_id) for r in records]

        def body(pipe: Any) -> list[PutResult]:
            pipe.watch(self._meta, *tkeys)
            info = self._decode_info(pipe.hgetall(self._meta))
            check_against_info(info, records)
            # Read through another connection: the WATCH above still guards these keys.
            rows = self._rows(tkeys)
            results: list[PutResult | None] = [None] * len(records)
            new: list[int] = []
            for i, (record, row) in enumerate(zip(records, rows, strict=True)):
                if row:
                    results[i] = resolve_existing(self._decode(row), record)
                else:
                    new.append(i)
            if not new:
                pipe.unwatch()
                return [r for r in results if r is not None]
            last = int(self._client.incrby(self._counter, len(new)))
            first_id = last - len(new) + 1
            pipe.multi()
            for offset, i in enumerate(new):
                stored = with_int_id(records[i], first_id + offset)
                tid = stored.tracklet_id
                pipe.hset(tkeys[i], mapping=self._encode(stored))
                pipe.zadd(self._tracklets, {tid: stored.int_id})
                pipe.sadd(self._ikey(stored.identity), tid)
                pipe.zadd(self._identities, {stored.identity: 0})
                frame_list = frames.get(tid)
                if frame_list:
                    pipe.delete(self._fkey(tid))
                    pipe.rpush(self._fkey(tid), *frame_list)
                results[i] = PutResult(record=stored, created=True)
            self._queue_changes(
                pipe, "add", [(records[i].tracklet_id, first_id + offset) for offset, i in enumerate(new)]
            )
            if info.fingerprint is None:
                first = records[new[0]]
                pipe.hset(
                    self._meta,
                    mapping={"schema": SCHEMA_VERSION, "fingerprint": first.fingerprint, "dim": first.dim},
                )
            pipe.execute()
            return [r for r in results if r is not None]

        return self._transact(body)

    def delete(self, tracklet_id: str) -> bool:
        tkey = self._tkey(tracklet_id)

        def body(pipe: Any) -> bool:
            pipe.watch(tkey)
            raw = pipe.hget(tkey, "json")
            if raw is None:
                pipe.unwatch()
                return False
            fields = json.loads(raw)
            identity = fields["identity"]
            ikey = self._ikey(identity)
            pipe.watch(ikey)
            remaining = int(pipe.scard(ikey))
            pipe.multi()
            pipe.delete(tkey, self._fkey(tracklet_id))
            pipe.zrem(self._tracklets, tracklet_id)
            pipe.srem(ikey, tracklet_id)
            if remaining <= 1:
                pipe.zrem(self._identities, identity)
            self._queue_changes(pipe, "remove", [(tracklet_id, int(fields["int_id"]))])
            pipe.execute()
            return True

        return self._transact(body)

    def delete_identity(self, identity: str) -> list[str]:
        ikey = self._ikey(identity)

        def body(pipe: Any) -> list[str]:
            pipe.watch(ikey)
            members = sorted(m.decode() for m in pipe.smembers(ikey))
            # A member's int id cannot change while it is a member (the WATCHed set would change).
            scores = pipe.zmscore(self._tracklets, members) if members else []
            gone = sorted(
                ((tid, int(score)) for tid, score in zip(members, scores, strict=True) if score is not None),
                key=lambda item: item[1],
            )
            pipe.multi()
            for tid in members:
                pipe.delete(self._tkey(tid), self._fkey(tid))
            if members:
                pipe.zrem(self._tracklets, *members)
            pipe.delete(ikey)
            pipe.zrem(self._identities, identity)
            self._queue_changes(pipe, "remove", gone)
            pipe.execute()
            return members

        return self._transact(body)

    def put_frames(self, tracklet_id: str, frames: Sequence[bytes]) -> None:
        frame_list = validate_frames(frames)
        tkey = self._tkey(tracklet_id)
        fkey = self._fkey(tracklet_id)

        def body(pipe: Any) -> None:
            pipe.watch(tkey)
            if not pipe.exists(tkey):
                pipe.unwatch()
                raise TrackletNotFound(tracklet_id)
            pipe.multi()
            pipe.delete(fkey)
            pipe.rpush(fkey, *frame_list)
            pipe.execute()

        self._transact(body)

    def _replace_descriptors(self, fingerprint: str, items: dict[str, np.ndarray], dim: int | None) -> int:
        def body(pipe: Any) -> int:
            pipe.watch(self._meta, self._tracklets)
            page = pipe.zrange(self._tracklets, 0, -1, withscores=True)
            stored = [m.decode() for m, _ in page]
            check_replacement_coverage(set(stored), set(items))
            rows = self._rows([self._tkey(t) for t in stored])
            pipe.multi()
            for tid, row in zip(stored, rows, strict=True):
                fields = json.loads(row[b"json"])
                fields["fingerprint"] = fingerprint
                pipe.hset(
                    self._tkey(tid),
                    mapping={
                        "json": json.dumps(fields, separators=(",", ":")).encode(),
                        "descriptor": descriptor_to_bytes(items[tid]),
                    },
                )
            pipe.hset(self._meta, mapping={"schema": SCHEMA_VERSION, "fingerprint": fingerprint})
            if dim is None:
                # No tracklets: the next write fixes the dimension again.
                pipe.hdel(self._meta, "dim")
            else:
                pipe.hset(self._meta, "dim", dim)
            # Every record changed in place: readers drop their copy and read the new one.
            changed = [(m.decode(), int(score)) for m, score in page]
            self._queue_changes(pipe, "remove", changed)
            self._queue_changes(pipe, "add", changed)
            pipe.execute()
            return len(stored)

        return self._transact(body)

    # ---- change feed --------------------------------------------------------------------
    def _changes_since(self, seq: int, limit: int) -> tuple[list[Change], int | None, int]:
        with self._errors():
            # One MULTI: the page, the oldest retained change and the head agree.
            pipe = self._client.pipeline(transaction=True)
            pipe.zrangebyscore(self._changes, f"({seq}", "+inf", start=0, num=limit)
            pipe.zrange(self._changes, 0, 0, withscores=True)
            pipe.get(self._change_seq)
            members, first, head = pipe.execute()
        changes = []
        for member in members:
            number, op, int_id, tracklet_id = member.decode().split(" ", 3)
            changes.append(Change(int(number), op, tracklet_id, int(int_id)))  # type: ignore[arg-type]
        return changes, int(first[0][1]) if first else None, int(head or 0)

    def change_head(self) -> int:
        with self._errors():
            return int(self._client.get(self._change_seq) or 0)

    # ---- jobs ---------------------------------------------------------------------------
    def create_job(self, job: Job) -> None:
        check_job(job)
        with self._errors():
            created = self._client.eval(_CREATE_JOB, 4, self._jobs, self._jobs_created, self._jobs_open,
                                        self._jobs_finished, job.id, repr(job.created_at), job.to_json(),
                                        "1" if job.finished else "0", repr(job.updated_at))
        if not created:
            raise JobExists(job.id)

    def get_job(self, job_id: str) -> Job | None:
        with self._errors():
            data = self._client.hget(self._jobs, job_id)
        return None if data is None else Job.from_json(data)

    def list_jobs(self, limit: int = 100, unfinished: bool = False) -> list[Job]:
        check_jobs_limit(limit)
        with self._errors():
            ids = self._client.zrevrange(self._jobs_open if unfinished else self._jobs_created, 0, limit - 1)
            rows = self._client.hmget(self._jobs, ids) if ids else []
        return [Job.from_json(r) for r in rows if r is not None]

    def replace_job(self, job: Job) -> bool:
        check_job(job)
        with self._errors():
            return bool(self._client.eval(_REPLACE_JOB, 3, self._jobs, self._jobs_open, self._jobs_finished, job.id,
                                          job.version - 1, job.to_json(), "1" if job.finished else "0",
                                          repr(job.updated_at)))

    def delete_finished_jobs(self, finished_before: float, limit: int = 1000) -> int:
        check_jobs_limit(limit)
        with self._errors():
            return int(self._client.eval(_DELETE_FINISHED_JOBS, 3, self._jobs, self._jobs_created, self._jobs_finished,
                                         repr(float(finished_before)), limit))

    # ---- derived data -------------------------------------------------------------------
    def _bkey(self, name: str) -> bytes:
        check_blob_name(name)
        return self._p + b"blob:" + name.encode()

    def put_blob(self, name: str, data: bytes) -> None:
        key = self._bkey(name)
        with self._errors():
            self._client.set(key, bytes(data))  # one SET: readers see the old value or the new one

    def get_blob(self, name: str) -> bytes | None:
        key = self._bkey(name)
        with self._errors():
            data = self._client.get(key)
        return None if data is None else bytes(data)

    def delete_blob(self, name: str) -> None:
        key = self._bkey(name)
        with self._errors():
            self._client.delete(key)

    # ---- reads --------------------------------------------------------------------------
    def get(self, tracklet_id: str) -> Record | None:
        with self._errors():
            row = self._client.hgetall(self._tkey(tracklet_id))
        return self._decode(row) if row else None

    def get_identity(self, identity: str) -> list[Record]:
        with self._errors():
            members = sorted(m.decode() for m in self._client.smembers(self._ikey(identity)))
            rows = self._rows([self._tkey(t) for t in members])
        records = [self._decode(r) for r in rows if r]
        return sorted(records, key=lambda r: r.int_id or 0)

    def get_frames(self, tracklet_id: str) -> list[bytes] | None:
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.exists(self._tkey(tracklet_id))
            pipe.lrange(self._fkey(tracklet_id), 0, -1)
            exists, frames = pipe.execute()
        if not exists or not frames:
            return None
        return [bytes(f) for f in frames]

    def list_identities(self, offset: int = 0, limit: int = 100) -> tuple[list[tuple[str, int]], int]:
        check_page(offset, limit)
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.zrange(self._identities, offset, offset + limit - 1)
            pipe.zcard(self._identities)
            names, total = pipe.execute()
            counts = self._client.pipeline(transaction=False)
            for name in names:
                counts.scard(self._ikey(name.decode()))
            sizes = counts.execute()
        return [(n.decode(), int(s)) for n, s in zip(names, sizes, strict=True)], int(total)

    def count_tracklets(self) -> int:
        with self._errors():
            return int(self._client.zcard(self._tracklets))

    def count_identities(self) -> int:
        with self._errors():
            return int(self._client.zcard(self._identities))

    def iter_records(self, batch: int = 1000, after: int = -1) -> Iterator[Record]:
        check_batch_size(batch)
        check_after(after)
        return self._iter_records(batch, after)

    def _iter_records(self, batch: int, after: int) -> Iterator[Record]:
        low: str | int = f"({after}"
        while True:
            with self._errors():
                page = self._client.zrangebyscore(
                    self._tracklets, low, "+inf", start=0, num=batch, withscores=True
                )
                if not page:
                    return
                rows = self._rows([self._tkey(m.decode()) for m, _ in page])
            for row in rows:
                if row:  # deleted since the page was read
                    yield self._decode(row)
            low = f"({int(page[-1][1])}"

    def int_ids(self) -> np.ndarray:
        with self._errors():
            page = self._client.zrange(self._tracklets, 0, -1, withscores=True)
        return np.array([int(score) for _, score in page], dtype=np.int64)

    def info(self) -> StoreInfo:
        with self._errors():
            return self._decode_info(self._client.hgetall(self._meta))

    # ---- lifecycle ----------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._client.close()
