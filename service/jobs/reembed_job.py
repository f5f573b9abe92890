"""``reembed``: switch a running gallery to another checkpoint while the servers go on serving.

``params.model`` names the new model inside ``--model-dir`` (a checkpoint directory for the torch
backend, an exported ``.onnx`` file for onnx); every stored tracklet is re-embedded from its kept
frames (``--keep-frames``) as an upload of the same frames would be. Progress ``phase``:

1. ``embed``: tracklets in int-id order, ``job_chunk_records`` per step. Each step's descriptors
   are staged in the store (blob ``reembed/{job}/{step}``) and its last int id saved as
   ``cursor``, so a job taken over after a crash resumes after the last saved step. Int ids grow
   with every new record, so tracklets enrolled meanwhile come after the cursor and the pass
   reaches them too.
2. ``switch``: tracklets stored since the last step are embedded, deleted ones dropped, the
   store's ``ACTIVE_MODEL_BLOB`` is set to the model, and ``Store.replace_descriptors`` swaps
   every descriptor and the fingerprint in one transaction (tried again when a write came in
   between). Every server then follows (``Runtime.follow_store_model``): this one at once, the
   replicas when their change feed shows the swap; one that cannot load the model stops being
   ready and says why. Until a server has switched, its enrollments answer 503
   ``model_switching``; its queries keep their old, self-consistent answers.

Until the switch the staged descriptors take as much room in the store as the gallery's own
(``dim`` x 4 bytes per tracklet); the switch holds them all in memory at once, as ``sasreid
reembed`` does.
"""

from __future__ import annotations

import io
import json
import logging
from itertools import islice
from typing import Any

import numpy as np

from index.store import InvalidRecord, Record, Store
from service.core.errors import ApiError
from service.encoders import Encoder
from service.jobs.kinds import JobContext, JobFailed, JobKind, check_param_names, register_job_kind
from service.reembedding import FRAMES_NOT_KEPT_HELP, FrameEmbedder
from service.runtime import ACTIVE_MODEL_BLOB, Runtime, load_model, model_path

log = logging.getLogger(__name__)

# Writes landing between the last read of the gallery and the swap make the swap fail (nothing
# changes); it is prepared again this many times before the job gives up.
_SWITCH_ATTEMPTS = 5
_ENCODE_BATCH = 8


def _resolve(runtime: Runtime, name: object) -> tuple[str, Encoder]:
    """(the model's name relative to the model directory, its encoder); ``ApiError`` (422)."""
    settings = runtime.settings
    if settings.model_dir is None:
        raise ApiError(422, "reembed_disabled",
                       "this server takes no re-embedding jobs: start it with --model-dir DIR (SASREID_MODEL_DIR)",
                       field="params.model")
    try:
        path = model_path(settings, name)
    except FileNotFoundError as exc:
        raise ApiError(422, "model_not_found", str(exc), field="params.model") from None
    except ValueError as exc:
        raise ApiError(422, "invalid_model", str(exc), field="params.model") from None
    from model import CheckpointError

    try:
        encoder = load_model(settings, path)
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        raise ApiError(422, "invalid_model", f"{name!r} cannot be loaded: {exc}", field="params.model") from None
    return str(path.relative_to(settings.model_dir.resolve())), encoder


def _blob_name(job_id: str, step: int) -> str:
    return f"reembed/{job_id}/{step:06d}"


def _stage(store: Store, name: str, records: list[Record], vectors: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, ids=np.array([r.tracklet_id for r in records], dtype=np.str_),
             int_ids=np.array([r.int_id for r in records], dtype=np.int64),
             vectors=np.stack([vectors[r.tracklet_id] for r in records]).astype(np.float32))
    store.put_blob(name, buf.getvalue())


def _load_stage(store: Store, name: str) -> dict[int, tuple[str, np.ndarray]]:
    data = store.get_blob(name)
    if data is None:
        raise JobFailed("staging_lost", f"the staged descriptors {name!r} are missing from the store; "
                        "start the job again")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {int(i): (str(t), v) for t, i, v in zip(z["ids"], z["int_ids"], z["vectors"], strict=True)}


def _embed(store: Store, embedder: FrameEmbedder, records: list[Record]) -> dict[str, np.ndarray]:
    """New descriptors of ``records`` from their kept frames (``JobFailed`` when some have none)."""
    missing = []
    for record in records:
        frames = store.get_frames(record.tracklet_id)
        if frames is None:
            missing.append(record.tracklet_id)
        elif not missing:
            try:
                embedder.add(record.tracklet_id, frames)
            except ApiError as exc:
                raise JobFailed("invalid_frames", f"a kept frame cannot be decoded: {exc.message}") from None
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise JobFailed("frames_not_kept", f"{shown}: {FRAMES_NOT_KEPT_HELP}", tracklets=missing[:100])
    return embedder.take()


@register_job_kind("reembed")
class ReembedJob(JobKind):
    @classmethod
    def check_params(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
        check_param_names(cls.name, params, {"model"})
        name, encoder = _resolve(runtime, params.get("model"))
        store = runtime.store
        if encoder.fingerprint == (store.info().fingerprint or runtime.encoder.fingerprint):
            raise ApiError(409, "already_embedded",
                           f"the gallery already holds descriptors of {name!r} (checkpoint {encoder.fingerprint})",
                           field="params.model")
        if any(job.kind == cls.name for job in store.list_jobs(unfinished=True)):
            raise ApiError(409, "reembed_running", "a re-embedding job is already queued or running; "
                           "wait for it to finish (GET /v1/jobs)")
        first = next(iter(store.iter_records(batch=1)), None)
        if first is not None and store.get_frames(first.tracklet_id) is None:
            raise ApiError(422, "frames_not_kept", f"{first.tracklet_id}: {FRAMES_NOT_KEPT_HELP}")
        return {"model": name, "fingerprint": encoder.fingerprint}

    @classmethod
    def can_run(cls, runtime: Runtime) -> bool:
        return runtime.settings.model_dir is not None

    @classmethod
    def initial_progress(cls, params: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
        return {"phase": "embed", "cursor": -1, "steps": 0, "embedded": 0,
                "total": runtime.store.count_tracklets(), "from_fingerprint": runtime.encoder.fingerprint,
                "to_fingerprint": params["fingerprint"]}

    @classmethod
    def run(cls, ctx: JobContext) -> dict[str, Any]:
        runtime, params = ctx.runtime, ctx.job.params
        store = runtime.store
        try:
            _, encoder = _resolve(runtime, params["model"])
        except ApiError as exc:
            raise JobFailed(exc.error, exc.message) from None
        if encoder.fingerprint != params["fingerprint"]:
            raise JobFailed("model_changed", f"{params['model']!r} now has fingerprint {encoder.fingerprint}, "
                            f"not the {params['fingerprint']} the job was created for")
        progress = ctx.progress
        try:
            if store.info().fingerprint != encoder.fingerprint:
                embedder = FrameEmbedder(encoder, _ENCODE_BATCH)
                if progress["phase"] == "embed":
                    cls._embed_pass(ctx, embedder, progress)
                progress["replaced"] = cls._switch(ctx, embedder, encoder, progress)
            else:  # swapped by an earlier run that stopped before recording it: every descriptor is new
                progress["replaced"] = store.count_tracklets()
        except JobFailed:
            _drop_stages(store, ctx.job.id, int(progress["steps"]))
            raise
        _drop_stages(store, ctx.job.id, int(progress["steps"]))
        progress["phase"] = "done"
        runtime.follow_store_model(encoder)
        return progress

    @staticmethod
    def _embed_pass(ctx: JobContext, embedder: FrameEmbedder, progress: dict[str, Any]) -> None:
        store, chunk = ctx.runtime.store, ctx.runtime.settings.job_chunk_records
        while True:
            records = list(islice(store.iter_records(batch=min(chunk, 1000), after=int(progress["cursor"])), chunk))
            if records:
                vectors = _embed(store, embedder, records)
                _stage(store, _blob_name(ctx.job.id, int(progress["steps"])), records, vectors)
                progress["cursor"] = records[-1].int_id
                progress["steps"] += 1
                progress["embedded"] += len(records)
            progress["total"] = max(store.count_tracklets(), int(progress["embedded"]))
            if len(records) < chunk:
                progress["phase"] = "switch"
            ctx.save(progress)
            if progress["phase"] != "embed":
                return

    @staticmethod
    def _switch(ctx: JobContext, embedder: FrameEmbedder, encoder: Encoder, progress: dict[str, Any]) -> int:
        store = ctx.runtime.store
        staged: dict[int, tuple[str, np.ndarray]] = {}
        for step in range(int(progress["steps"])):
            staged.update(_load_stage(store, _blob_name(ctx.job.id, step)))
        store.put_blob(ACTIVE_MODEL_BLOB, json.dumps(
            {"fingerprint": encoder.fingerprint, "model": ctx.job.params["model"]}).encode())
        # Tracklets stored since the staged pass (int ids only grow) are embedded here and not
        # staged, so the saved cursor stays at the last staged step: a job stopped during the
        # switch starts the switch again from the staged steps.
        cursor, late_count = int(progress["cursor"]), 0
        for _ in range(_SWITCH_ATTEMPTS):
            late = list(store.iter_records(after=cursor))
            if late:
                vectors = _embed(store, embedder, late)
                for record in late:
                    staged[int(record.int_id)] = (record.tracklet_id, vectors[record.tracklet_id])  # type: ignore[arg-type]
                cursor, late_count = int(late[-1].int_id), late_count + len(late)  # type: ignore[arg-type]
            live = set(store.int_ids().tolist())
            items = {tid: vec for iid, (tid, vec) in staged.items() if iid in live}
            ctx.save(progress)  # renews the lease before the long transaction
            try:
                replaced = store.replace_descriptors(encoder.fingerprint, items)
                progress["embedded"] += late_count
                return replaced
            except InvalidRecord as exc:
                log.info("job %s: the gallery changed during the switch (%s); preparing it again", ctx.job.id, exc)
        raise JobFailed("gallery_busy", f"the gallery changed during each of {_SWITCH_ATTEMPTS} attempts to switch; "
                        "run the job again when enrollment is quieter")


def _drop_stages(store: Store, job_id: str, steps: int) -> None:
    for step in range(steps):
        store.delete_blob(_blob_name(job_id, step))

