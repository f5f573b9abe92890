"""Creating jobs and running them: one ``JobRunner`` thread per server process."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from index.store import Job, StoreError
from service.core.errors import ApiError
from service.jobs.kinds import JOB_KINDS, JobContext, JobFailed, Stopping, make_job_kind
from service.runtime import Runtime

log = logging.getLogger(__name__)

_LIST_LIMIT = 1000
_SWEEP_EVERY_S = 60.0


class LeaseLost(Exception):
    """Another process took the job over (our lease ran out); stop without writing it."""


def create_job(runtime: Runtime, kind: str, params: dict[str, Any]) -> Job:
    """Check and store a new queued job (raises ``ApiError``)."""
    cls = make_job_kind(kind)
    params = cls.check_params(params, runtime)
    pending = len(runtime.store.list_jobs(limit=_LIST_LIMIT, unfinished=True))
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
        self._next_sweep = 0.0  # time.monotonic() of the next sweep of finished jobs

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
        jobs = sorted(self.runtime.store.list_jobs(limit=_LIST_LIMIT, unfinished=True), key=lambda j: j.created_at)
        for job in jobs:
            if job.kind in JOB_KINDS and job.claimable(now) and JOB_KINDS[job.kind].can_run(self.runtime):
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
        ctx = JobContext(self.runtime, job, self.write, lambda: self.stopping)
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

    def sweep(self) -> int:
        """Delete finished jobs older than ``job_retention_s`` (a bounded batch per call); how many.
        Runs at most once a minute (or once per retention, if shorter): each sweep is a write to
        the store."""
        retention = self.runtime.settings.job_retention_s
        if retention <= 0 or time.monotonic() < self._next_sweep:
            return 0
        self._next_sweep = time.monotonic() + min(_SWEEP_EVERY_S, retention)
        deleted = self.runtime.store.delete_finished_jobs(time.time() - retention, limit=_LIST_LIMIT)
        if deleted:
            log.info("deleted %d jobs finished more than %.0f s ago", deleted, retention)
        return deleted

    def _loop(self) -> None:
        settings = self.runtime.settings
        while not self._stop.is_set():
            ran = False
            if self.runtime.ready:
                try:
                    ran = self.run_one()
                    if not ran:
                        self.sweep()
                except (StoreError, LeaseLost):
                    log.warning("job runner: store unavailable, retrying", exc_info=True)
                except Exception:  # keep the thread alive; the job is retried after its lease
                    log.exception("job runner error")
            if not ran:
                self._stop.wait(settings.job_poll_s)
