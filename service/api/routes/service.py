"""Service routes: ``/stats`` (read key, versioned with the API) and the unversioned probes
``/healthz``, ``/readyz`` and ``/metrics`` (no key), whose paths orchestrators and Prometheus fix."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, RuntimeDep
from service.core.errors import ApiError
from service.metrics import PROM_CONTENT_TYPE
from service.runtime import Runtime
from service.schemas import Health, Readiness, Stats, error_responses

router = APIRouter(tags=["service"])
probes = APIRouter(tags=["service"])


def _stats(runtime: Runtime) -> Stats:
    gallery = runtime.gallery
    return Stats(
        tracklets=runtime.store.count_tracklets(),
        identities=runtime.store.count_identities(),
        indexed_tracklets=len(gallery) if gallery is not None else 0,
        fingerprint=runtime.encoder.fingerprint,
        backend=runtime.encoder.backend,
        device=runtime.encoder.device,
        dim=runtime.encoder.dim,
        index=runtime.settings.index,
        store=runtime.store_url,
        keep_frames=runtime.settings.keep_frames,
        ready=runtime.ready,
        max_frames_per_tracklet=runtime.settings.max_frames_per_tracklet,
        max_frame_bytes=runtime.settings.max_frame_bytes,
    )


_ERRORS = error_responses(401, 503)


@router.get("/stats", response_model=Stats, summary="Gallery size and model facts", responses=_ERRORS)
async def stats(_: ReadAccess, runtime: RuntimeDep) -> Stats:
    return await run_in_threadpool(_stats, runtime)


@probes.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@probes.get(
    "/readyz",
    response_model=Readiness,
    summary="200 once the model is loaded and the index restored, 503 before",
    responses=error_responses(503),
)
async def readyz(runtime: RuntimeDep) -> Readiness:
    if not runtime.ready:
        if runtime.phase == "failed":
            raise ApiError(503, "not_ready", f"this server cannot serve: {runtime.error}")
        raise ApiError(503, "not_ready", "the gallery index is being restored from the store")
    if not await run_in_threadpool(runtime.store.ping):
        raise ApiError(503, "store_unavailable", f"the store {runtime.store_url} does not answer")
    gallery = runtime.gallery
    return Readiness(ready=True, tracklets=len(gallery) if gallery is not None else None)


@probes.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=PROM_CONTENT_TYPE)
