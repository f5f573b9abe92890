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

Modules: ``kinds`` (the interface and registry), ``import_job`` (bulk import from a file),
``reembed_job`` (switch the gallery to another checkpoint, live), ``runner`` (creating jobs, the
runner thread).
"""

from service.jobs import import_job, reembed_job  # noqa: F401  (register the kinds)
from service.jobs.kinds import JOB_KINDS, JobFailed, JobKind, job_kinds, make_job_kind, register_job_kind
from service.jobs.runner import JobRunner, create_job

__all__ = ["JOB_KINDS", "JobFailed", "JobKind", "JobRunner", "create_job", "job_kinds", "make_job_kind",
           "register_job_kind"]
