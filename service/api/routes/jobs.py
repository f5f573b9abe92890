"""``/v1/jobs``: start a long job (202 + ``Location``), follow its progress, list recent jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, ReadyRuntime, WriteAccess
from service.api.versioning import API_PREFIX
from service.core.errors import ApiError
from service.jobs import create_job
from service.schemas import JobIn, JobOut, JobPage, error_responses

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post(
    "",
    response_model=JobOut,
    status_code=202,
    summary="Start a long job (bulk import from a file)",
    responses=error_responses(401, 403, 422, 429, 503),
)
async def start_job(body: JobIn, response: Response, _: WriteAccess, runtime: ReadyRuntime) -> JobOut:
    """Accepted jobs run in the background, one at a time per server, and survive a restart: poll
    the ``Location`` (``GET /v1/jobs/{id}``) until ``state`` is ``succeeded`` or ``failed``."""
    job = await run_in_threadpool(create_job, runtime, body.kind, body.params)
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    return JobOut.from_job(job)


@router.get("/{job_id}", response_model=JobOut, summary="A job's state and progress",
            responses=error_responses(401, 404, 422, 503))
async def get_job(job_id: JobPath, _: ReadAccess, runtime: ReadyRuntime) -> JobOut:
    job = await run_in_threadpool(runtime.store.get_job, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}", field="job_id")
    return JobOut.from_job(job)


@router.get("", response_model=JobPage, summary="The newest jobs, newest first", responses=error_responses(401, 422, 503))
async def list_jobs(
    _: ReadAccess, runtime: ReadyRuntime, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> JobPage:
    jobs = await run_in_threadpool(runtime.store.list_jobs, limit)
    return JobPage(items=[JobOut.from_job(j) for j in jobs])
