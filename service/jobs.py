"""Long jobs: work bigger than one request, run in the background and durable in the store.

``POST /v1/jobs`` stores a ``Job`` (``index.store.job``) as ``queued``. Every server process runs a
``JobRunner`` thread that claims the oldest claimable job (a compare-and-set on the job's version,
with a lease of ``job_lease_s`` seconds), runs it step by step and saves its progress after every
step, renewing the lease. A server that dies leaves its lease to run out; the next runner to look
(the same server after a restart, or a replica on the same store) claims the job and resumes it
from the saved progress. A step whose writes were stored but whose progress was not saved runs
again on resume, so every step must be idempotent (an import stores the same records again: same id
and content is "existing", not an error). A server stopping cleanly releases its job at once.

Kinds live in one registry (``register_job_kind``, ``make_job_kind``); each checks its parameters
when the job is created (so a bad request is a 4xx, not a failed job) and runs from a ``Job``.

``import``: a JSON-lines file under ``import_dir`` (``--import-dir``), one ``BatchRecordIn`` per
line (the records of ``POST /v1/tracklets/batch``), stored ``job_chunk_records`` lines per step.
Progress: ``offset`` (bytes read), ``bytes_total``, ``lines``, ``records``, ``created``,
``existing``. A bad line fails the job with its line number; the steps before it stay stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from index.store import FINISHED, Job, StoreError
from service.core.errors import ApiError, from_store_error
from service.enrollment import commit_batch, records_from_batch
from service.runtime import Runtime
from service.schemas import BatchRecordIn

log = logging.getLogger(__name__)

_MAX_LINE_BYTES = 1 << 20  # one record: a descriptor of a few thousand floats and its metadata
_LIST_LIMIT = 1000


class JobFailed(Exception):
    """The job cannot succeed; ``code`` and ``message`` are stored as its error."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def as_error(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class LeaseLost(Exception):
    """Another process took the job over (our lease ran out); stop without writing it."""


class Stopping(Exception):
    """The server is shutting down; the job is released to be resumed."""


class JobContext:
    """What a running job sees: the runtime, its progress, and ``save`` to record a step."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self.runtime = runner.runtime
        self._runner = runner
        self.job = job

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.job.progress)

    def save(self, progress: dict[str, Any]) -> None:
        """Store ``progress`` and renew the lease; ``LeaseLost`` if the job is no longer ours,
        ``Stopping`` when the server is shutting down (after saving)."""
        self.job = self._runner.write(self.job, progress=progress)
        if self._runner.stopping:
            raise Stopping


class JobKind(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def check_params(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
        """The normalised parameters of a new job; ``ApiError`` (4xx) when they cannot work."""

    @classmethod
    @abstractmethod
    def initial_progress(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def run(cls, ctx: JobContext) -> dict[str, Any]:
        """Do the (rest of the) work, ``ctx.save`` after each step; return the final progress."""


JOB_KINDS: dict[str, type[JobKind]] = {}


def register_job_kind(name: str) -> Callable[[type[JobKind]], type[JobKind]]:
    def add(cls: type[JobKind]) -> type[JobKind]:
        cls.name = name
        JOB_KINDS[name] = cls
        return cls

    return add


def job_kinds() -> list[str]:
    return sorted(JOB_KINDS)


def make_job_kind(name: str) -> type[JobKind]:
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise ApiError(422, "unknown_job_kind", f"unknown job kind {name!r}; valid kinds: {', '.join(job_kinds())}",
                       field="kind") from None


# ---- import ---------------------------------------------------------------------------------------
def resolve_source(import_dir: Path | None, source: object) -> Path:
    """``source`` as a regular file inside ``import_dir``; ``ApiError`` (422) otherwise."""
    if import_dir is None:
        raise ApiError(422, "imports_disabled",
                       "this server takes no import jobs: start it with --import-dir DIR (SASREID_IMPORT_DIR)",
                       field="params.source")
    if not isinstance(source, str) or not source or "\x00" in source:
        raise ApiError(422, "invalid_source", "params.source must be a file name relative to the import directory",
                       field="params.source")
    root = import_dir.resolve()
    path = (root / source).resolve()
    if Path(source).is_absolute() or not path.is_relative_to(root):
        raise ApiError(422, "invalid_source", f"{source!r} is outside the import directory", field="params.source")
    if not path.is_file():
        raise ApiError(422, "source_not_found", f"{source!r} is not a file in the import directory",
                       field="params.source")
    return path


@register_job_kind("import")
class ImportJob(JobKind):
    @classmethod
    def check_params(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
        unknown = set(params) - {"source"}
        if unknown:
            raise ApiError(422, "invalid_params", f"unknown import parameter(s): {', '.join(sorted(unknown))}",
                           field="params")
        path = resolve_source(runtime.settings.import_dir, params.get("source"))
        return {"source": str(path.relative_to(runtime.settings.import_dir.resolve()))}  # type: ignore[union-attr]

    @classmethod
    def initial_progress(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
        path = resolve_source(runtime.settings.import_dir, params["source"])
        return {"offset": 0, "bytes_total": path.stat().st_size, "lines": 0, "records": 0, "created": 0,
                "existing": 0}

    @classmethod
    def run(cls, ctx: JobContext) -> dict[str, Any]:
        runtime = ctx.runtime
        try:
            path = resolve_source(runtime.settings.import_dir, ctx.job.params["source"])
        except ApiError as exc:
            raise JobFailed(exc.error, exc.message) from None
        chunk = runtime.settings.job_chunk_records
        progress = ctx.progress
        with path.open("rb") as f:
            f.seek(int(progress["offset"]))
            while True:
                items, first_line, lines, offset = _read_chunk(f, chunk, int(progress["lines"]))
                if items:
                    created = _store(runtime, items, first_line)
                    progress["created"] += created
                    progress["existing"] += len(items) - created
                    progress["records"] += len(items)
                progress.update(offset=offset, lines=lines, bytes_total=max(offset, path.stat().st_size))
                if len(items) < chunk:
                    return progress
                ctx.save(progress)


def _read_chunk(f: Any, chunk: int, lines: int) -> tuple[list[BatchRecordIn], int, int, int]:
    """Up to ``chunk`` records from the file's current position: (records, line number of the
    first, lines consumed so far, byte offset after the last)."""
    items: list[BatchRecordIn] = []
    first = lines + 1
    while len(items) < chunk:
        line = f.readline(_MAX_LINE_BYTES + 1)
        if not line:
            break
        lines += 1
        if len(line) > _MAX_LINE_BYTES:
            raise JobFailed("line_too_long", f"line {lines} is longer than {_MAX_LINE_BYTES} bytes", line=lines)
        if not line.strip():
            continue
        try:
            items.append(BatchRecordIn.model_validate_json(line))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "record"
            raise JobFailed("invalid_record", f"line {lines}: {where}: {err.get('msg')}", line=lines) from None
    return items, first, lines, f.tell()


def _store(runtime: Runtime, items: list[BatchRecordIn], first_line: int) -> int:
    """Store one chunk (all or nothing); the number created. Raises ``JobFailed`` for a refusal
    that a retry would meet again, ``StoreError`` / ``ApiError`` (5xx) for a transient one."""
    try:
        records = records_from_batch(runtime, items)
        results = commit_batch(runtime, records)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        raise JobFailed(exc.error, f"lines {first_line}-{first_line + len(items) - 1}: {exc.message}") from None
    except StoreError as exc:
        api = from_store_error(exc)
        if api.status >= 500:
            raise
        raise JobFailed(api.error, f"lines {first_line}-{first_line + len(items) - 1}: {api.message}") from None
    return sum(1 for r in results if r.created)


# ---- creating and running jobs ----------------------------------------------------------------
def create_job(runtime: Runtime, kind: str, params: dict[str, Any]) -> Job:
    """Check and store a new queued job (raises ``ApiError``)."""
    cls = make_job_kind(kind)
    params = cls.check_params(params, runtime)
    pending = sum(1 for j in runtime.store.list_jobs(limit=_LIST_LIMIT) if j.state not in FINISHED)
    if pending >= runtime.settings.max_pending_jobs:
        raise ApiError(429, "too_many_jobs",
                       f"{pending} jobs are queued or running (max_pending_jobs); wait for some to finish")
    now = time.time()
    job = Job(id=uuid.uuid4().hex, kind=kind, created_at=now, updated_at=now, params=params,
              progress=cls.initial_progress(params, runtime))
    runtime.store.create_job(job)
    return job


class JobRunner:
    """One per server process: claims and runs jobs in a background thread."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sasreid-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def write(self, job: Job, **changes: Any) -> Job:
        """``job`` with ``changes``, the lease renewed, stored; ``LeaseLost`` when it is not ours."""
        now = time.time()
        new = job.next(**{"updated_at": now, "lease_until": now + self.runtime.settings.job_lease_s, **changes})
        if not self.runtime.store.replace_job(new):
            raise LeaseLost(job.id)
        return new

    def claim(self) -> Job | None:
        """The oldest claimable job of a known kind, now ours; None when there is none."""
        now = time.time()
        jobs = sorted(self.runtime.store.list_jobs(limit=_LIST_LIMIT), key=lambda j: j.created_at)
        for job in jobs:
            if job.kind in JOB_KINDS and job.claimable(now):
                try:
                    return self.write(job, state="running", owner=self.owner)
                except LeaseLost:
                    continue  # another process claimed it first
        return None

    def run_one(self) -> bool:
        """Claim and run one job; False when there was none to run."""
        job = self.claim()
        if job is None:
            return False
        ctx = JobContext(self, job)
        try:
            final = JOB_KINDS[job.kind].run(ctx)
            self.write(ctx.job, state="succeeded", progress=final, owner=None, lease_until=0.0)
            log.info("job %s (%s) succeeded: %s", job.id, job.kind, final)
        except JobFailed as exc:
            self.write(ctx.job, state="failed", error=exc.as_error(), owner=None, lease_until=0.0)
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc.message)
        except Stopping:
            self.write(ctx.job, owner=None, lease_until=0.0)  # resume at once after the restart
        except LeaseLost:
            log.warning("job %s: another process took it over", job.id)
        except (StoreError, ApiError, OSError) as exc:
            # Transient (store unavailable, disk): keep the progress saved so far; the lease runs
            # out and the job is claimed again, by this process or another.
            log.warning("job %s (%s) interrupted, will resume: %s", job.id, job.kind, exc)
        return True

    def _loop(self) -> None:
        settings = self.runtime.settings
        while not self._stop.is_set():
            ran = False
            if self.runtime.ready:
                try:
                    ran = self.run_one()
                except (StoreError, LeaseLost):
                    log.warning("job runner: store unavailable, retrying", exc_info=True)
                except Exception:  # keep the thread alive; the job is retried after its lease
                    log.exception("job runner error")
            if not ran:
                self._stop.wait(settings.job_poll_s)
