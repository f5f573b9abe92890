"""Job kinds: the interface a long job implements, and the one registry of kinds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from index.store import Job
from service.core.errors import ApiError
from service.runtime import Runtime


class JobFailed(Exception):
    """The job cannot succeed; ``code`` and ``message`` are stored as its error."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def as_error(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class Stopping(Exception):
    """The server is shutting down; the job is released to be resumed."""


class JobContext:
    """What a running job sees: the runtime, its progress, and ``save`` to record a step."""

    def __init__(self, runtime: Runtime, job: Job, write: Callable[..., Job], stopping: Callable[[], bool]) -> None:
        self.runtime = runtime
        self.job = job
        self._write = write
        self._stopping = stopping

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.job.progress)

    def save(self, progress: dict[str, Any]) -> None:
        """Store ``progress`` and renew the lease; ``LeaseLost`` if the job is no longer ours,
        ``Stopping`` when the server is shutting down (after saving)."""
        self.job = self._write(self.job, progress=progress)
        if self._stopping():
            raise Stopping


class JobKind(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def check_params(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
        """The normalised parameters of a new job; ``ApiError`` (4xx) when they cannot work."""

    @classmethod
    def can_run(cls, runtime: Runtime) -> bool:
        """Whether this server is set up to run jobs of the kind (a replica that is not leaves
        them to one that is, instead of failing them)."""
        return True

    @classmethod
    @abstractmethod
    def initial_progress(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def run(cls, ctx: JobContext) -> dict[str, Any]:
        """Do the (rest of the) work, ``ctx.save`` after each step; return the final progress."""


def check_param_names(kind: str, params: dict[str, Any], allowed: set[str]) -> None:
    """``ApiError`` (422 ``invalid_params``) naming the parameters a job kind does not take."""
    unknown = set(params) - allowed
    if unknown:
        raise ApiError(422, "invalid_params", f"unknown {kind} parameter(s): {', '.join(sorted(unknown))}",
                       field="params")


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
