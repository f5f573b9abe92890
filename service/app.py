"""The FastAPI app factory.

``create_app(settings)`` returns an app whose lifespan opens the runtime (model, store,
fingerprint check; a failure aborts start-up) unless one is passed in, then restores the FAISS
gallery in the background: ``/healthz`` answers at once, ``/readyz`` and the gallery routes answer
503 until the index is restored. While serving, a maintenance task rebuilds the index from the
store whenever a write left their agreement in doubt (see ``Runtime.mark_dirty``), and a
``service.jobs.JobRunner`` thread runs the long jobs of ``/v1/jobs`` kept in the store.

OpenAPI docs: ``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json``; none needs a key. The web
console is at ``/ui`` (``service.ui``) unless ``settings.ui`` is off.

Paths: the API is under ``/v1``; the unversioned paths of before remain as deprecated aliases
(``service.api.versioning``); ``/healthz``, ``/readyz``, ``/metrics``, the docs and ``/ui`` are
unversioned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.body_limit import BodySizeLimitMiddleware
from service.api.openapi import install_openapi
from service.api.routes import identities, jobs, query, service, tracklets
from service.api.timeouts import BodyTimeoutMiddleware
from service.api.versioning import API_VERSION, DeprecationHeaders, include_versioned
from service.core.config import Settings
from service.core.errors import ApiError, install_error_handlers
from service.jobs import JobRunner
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.runtime import Runtime, StartupError, open_runtime
from service.ui import install_ui

log = logging.getLogger(__name__)

# How often the maintenance task looks for an index that needs a rebuild.
_MAINTENANCE_INTERVAL_S = 1.0


async def _restore(runtime: Runtime, on_fatal: Callable[[str], None] | None) -> None:
    try:
        await asyncio.to_thread(runtime.restore_gallery)
    except StartupError as exc:
        log.critical("%s", exc)
        if on_fatal is not None:
            on_fatal(str(exc))


async def _maintain(runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(_MAINTENANCE_INTERVAL_S)
        if runtime.dirty:
            try:
                await asyncio.to_thread(runtime.resync)
            except Exception:  # keep the loop alive; the next round retries
                log.exception("gallery rebuild failed")


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return ApiError(500, "internal_error", f"internal error: {type(exc).__name__}").response()


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. ``runtime``: an already opened runtime (``sasreid serve`` opens it first to
    report start-up errors before binding the port). ``on_fatal``: called with a message when the
    background gallery restore fails (the CLI stops the server then)."""
    if settings is None:
        settings = runtime.settings if runtime is not None else Settings()
    settings.check_serviceable()
    metrics = runtime.metrics if runtime is not None else ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime if runtime is not None else await run_in_threadpool(open_runtime, settings, metrics)
        app.state.runtime = rt
        tasks = [asyncio.create_task(_restore(rt, on_fatal)), asyncio.create_task(_maintain(rt))]
        runner = JobRunner(rt)
        runner.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Between two steps the running job saves its progress and is released.
            await run_in_threadpool(runner.stop)
            await run_in_threadpool(rt.close)

    app = FastAPI(
        title="SAS-VPReID retrieval API",
        version=API_VERSION,
        summary="Enroll person tracklets and search them by video re-identification at extreme far distances.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_openapi(app, settings)
    install_error_handlers(app)
    app.add_exception_handler(Exception, _internal_error)
    for module in (tracklets, identities, query, service):
        include_versioned(app, module.router)
    for router in (tracklets.v1_router, query.v1_router, jobs.router):
        include_versioned(app, router, v1_only=True)
    app.include_router(service.probes)
    if settings.ui:
        install_ui(app)
    # Added last = outermost: the latency histogram also times requests rejected for their size.
    app.add_middleware(
        BodyTimeoutMiddleware, idle_s=settings.body_idle_timeout_s, total_s=settings.body_timeout_s
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(DeprecationHeaders)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
