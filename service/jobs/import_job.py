"""``import``: a JSON-lines file under ``import_dir`` (``--import-dir``), one ``BatchRecordIn`` per
line (the records of ``POST /v1/tracklets/batch``), stored ``job_chunk_records`` lines per step.

Progress: ``offset`` (bytes read), ``bytes_total``, ``lines``, ``records``, ``created``,
``existing``. A bad line fails the job with its line number; the steps before it stay stored.
A step replayed after a crash stores the same records again, which the store answers "existing".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from index.store import StoreError
from service.core.errors import ApiError, from_store_error
from service.core.paths import inside
from service.enrollment import commit_batch, records_from_batch
from service.jobs.kinds import JobContext, JobFailed, JobKind, check_param_names, register_job_kind
from service.runtime import Runtime
from service.schemas import BatchRecordIn

_MAX_LINE_BYTES = 1 << 20  # one record: a descriptor of a few thousand floats and its metadata


def resolve_source(import_dir: Path | None, source: object) -> Path:
    """``source`` as a regular file inside ``import_dir``; ``ApiError`` (422) otherwise."""
    if import_dir is None:
        raise ApiError(422, "imports_disabled",
                       "this server takes no import jobs: start it with --import-dir DIR (SASREID_IMPORT_DIR)",
                       field="params.source")
    if not isinstance(source, str) or not source or "\x00" in source:
        raise ApiError(422, "invalid_source", "params.source must be a file name relative to the import directory",
                       field="params.source")
    path = inside(import_dir, source)
    if path is None:
        raise ApiError(422, "invalid_source", f"{source!r} is outside the import directory", field="params.source")
    if not path.is_file():
        raise ApiError(422, "source_not_found", f"{source!r} is not a file in the import directory",
                       field="params.source")
    return path


@register_job_kind("import")
class ImportJob(JobKind):
    @classmethod
    def check_params(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
        check_param_names(cls.name, params, {"source"})
        path = resolve_source(runtime.settings.import_dir, params.get("source"))
        return {"source": str(path.relative_to(runtime.settings.import_dir.resolve()))}  # type: ignore[union-attr]

    @classmethod
    def can_run(cls, runtime: Runtime) -> bool:
        return runtime.settings.import_dir is not None

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
                    created = _store(runtime, items, f"lines {first_line}-{lines}", int(progress["records"]))
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


def _store(runtime: Runtime, items: list[BatchRecordIn], where: str, before: int) -> int:
    """Store one chunk (all or nothing; ``before`` records of the file precede it, so a bad one is
    named ``records[i]`` by its place in the file); the number created. Raises ``JobFailed`` (its
    message starting with ``where``) for a refusal that a retry would meet again, ``StoreError`` /
    ``ApiError`` (5xx) for a transient one."""
    try:
        records = records_from_batch(runtime, items, first=before)
        results = commit_batch(runtime, records)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        raise JobFailed(exc.error, f"{where}: {exc.message}") from None
    except StoreError as exc:
        api = from_store_error(exc)
        if api.status >= 500:
            raise
        raise JobFailed(api.error, f"{where}: {api.message}") from None
    return sum(1 for r in results if r.created)
