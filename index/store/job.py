"""Long-running jobs kept in the store, so a restart (or another replica) can finish them.

A ``Job`` is a small JSON document: what to do (``kind``, ``params``), how far it got
(``progress``: whatever its kind needs to resume, e.g. a byte offset) and who is working on it
(``owner`` with a lease: ``lease_until``, seconds since the epoch). Every write of a job is a
compare-and-set on ``version`` (``Store.replace_job``), so of two processes claiming the same job
exactly one wins, and a process whose lease was taken over can no longer write the job.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from index.store.errors import InvalidRecord

JobState = Literal["queued", "running", "succeeded", "failed"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed")
FINISHED: frozenset[str] = frozenset({"succeeded", "failed"})

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_JOB_BYTES = 64 * 1024  # a job document is small: parameters and counters, never data


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    created_at: float
    updated_at: float
    state: JobState = "queued"
    params: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    owner: str | None = None
    lease_until: float = 0.0
    version: int = 0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def claimable(self, now: float) -> bool:
        """Not finished, and nobody holds a live lease on it."""
        return not self.finished and (self.owner is None or self.lease_until < now)

    def next(self, **changes: Any) -> Job:
        """This job with ``changes``, one version later (what ``Store.replace_job`` expects)."""
        return dataclasses.replace(self, version=self.version + 1, **changes)

    def to_json(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)
        if len(text.encode()) > MAX_JOB_BYTES:
            raise InvalidRecord(f"job {self.id!r} is {len(text.encode())} bytes as JSON; at most {MAX_JOB_BYTES}")
        return text

    @staticmethod
    def from_json(text: str | bytes) -> Job:
        data = json.loads(text)
        return Job(**data)


def check_job(job: Job) -> None:
    """Raise ``InvalidRecord`` for a job the store must not keep."""
    if not isinstance(job.id, str) or not _JOB_ID.match(job.id):
        raise InvalidRecord(f"job id must be 1-64 characters of [A-Za-z0-9_-], got {job.id!r}")
    if job.state not in JOB_STATES:
        raise InvalidRecord(f"job state must be one of {', '.join(JOB_STATES)}, got {job.state!r}")
    if not isinstance(job.kind, str) or not job.kind:
        raise InvalidRecord(f"job kind must be a non-empty string, got {job.kind!r}")
    job.to_json()  # size and JSON-ability
