"""Re-embedding as a job (``POST /v1/jobs`` kind ``reembed``): a running gallery switches to another
checkpoint without a restart, on the server that ran the job and on its replicas (real app, real
SQLite / Redis stores, the runner's own code path)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index.store import open_store
from service.encoders import TorchEncoder
from service.images import FrameLimits, decode_tracklet
from service.jobs import JobRunner
from service.jobs.kinds import JobContext, Stopping
from service.jobs.reembed_job import ReembedJob
from tests.service.conftest import READ_KEY, WRITE_KEY, settings_for
from tests.service.test_jobs import wait_job


def _headers(key: str = WRITE_KEY) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def model_dir(checkpoints: Any, tmp_path: Path) -> Path:
    """A model directory holding both test checkpoints, as ``a`` and ``b``."""
    root = tmp_path / "models"
    shutil.copytree(checkpoints.a, root / "a")
    shutil.copytree(checkpoints.b, root / "b")
    return root


def _enroll(url: str, make_tracklet: Callable[..., Any], seeds: dict[str, int]) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        for tid, seed in seeds.items():
            files = [("frames", (name, data, "image/png")) for name, data in make_tracklet(seed)]
            r = http.post("/v1/tracklets", data={"identity": f"id_{tid}", "tracklet_id": tid, "camera": "c1"},
                          files=files, headers=_headers())
            assert r.status_code == 201, r.text


def _start_reembed(url: str, model: str = "b") -> str:
    r = httpx.post(f"{url}/v1/jobs", json={"kind": "reembed", "params": {"model": model}}, headers=_headers())
    assert r.status_code == 202, r.text
    return str(r.headers["location"])


def _b_descriptor(checkpoint: Path, make_tracklet: Callable[..., Any], seed: int) -> np.ndarray:
    """What a server of checkpoint B makes of these frames (the reference a re-embedding must equal)."""
    encoder = TorchEncoder(checkpoint)
    x = decode_tracklet(make_tracklet(seed), FrameLimits(1 << 30, 1 << 31), encoder.input_spec)
    return encoder.encode(x[None])[0]


def _assert_store_holds_b(url: str, checkpoints: Any, make_tracklet: Callable[..., Any],
                          seeds: dict[str, int]) -> None:
    with open_store(url) as store:
        assert store.info().fingerprint == checkpoints.fingerprint_b
        records = {r.tracklet_id: r for r in store.iter_records()}
    assert set(records) == set(seeds)
    for tid, seed in seeds.items():
        assert records[tid].fingerprint == checkpoints.fingerprint_b
        np.testing.assert_allclose(records[tid].descriptor, _b_descriptor(checkpoints.b, make_tracklet, seed),
                                   atol=1e-5)


def test_a_reembed_job_switches_the_running_server_to_the_new_checkpoint(
    thread_server, checkpoints, sqlite_url: str, model_dir: Path, make_tracklet
) -> None:
    s = thread_server(settings_for(checkpoints.a, sqlite_url, keep_frames=True, model_dir=model_dir,
                                   job_chunk_records=2, job_poll_s=0.05))
    seeds = {f"t{i}": 300 + i for i in range(5)}
    _enroll(s.url, make_tracklet, seeds)
    with httpx.Client(base_url=s.url, timeout=60) as http:
        location = _start_reembed(s.url)
        job = wait_job(http, location)
        assert job["state"] == "succeeded", job
        p = job["progress"]
        assert (p["phase"], p["steps"], p["embedded"], p["replaced"], p["total"]) == ("done", 3, 5, 5, 5)
        assert (p["from_fingerprint"], p["to_fingerprint"]) == (checkpoints.fingerprint_a, checkpoints.fingerprint_b)
        assert job["params"] == {"model": "b", "fingerprint": checkpoints.fingerprint_b}
        # Switched without a restart: the server embeds with B and searches B's descriptors.
        stats = http.get("/v1/stats", headers=_headers(READ_KEY)).json()
        assert (stats["fingerprint"], stats["tracklets"], stats["indexed_tracklets"]) == (
            checkpoints.fingerprint_b, 5, 5)
        assert http.get("/readyz").status_code == 200
        for tid, seed in seeds.items():
            files = [("frames", (n, d, "image/png")) for n, d in make_tracklet(seed)]
            top = http.post("/v1/query", data={"top_k": "1"}, files=files, headers=_headers(READ_KEY)).json()
            assert top["results"][0]["tracklets"][0]["tracklet_id"] == tid
            assert top["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        _enroll(s.url, make_tracklet, {"after": 399})  # new enrollments are B's
        seeds["after"] = 399
        # B again is refused (nothing to do).
        r = http.post("/v1/jobs", json={"kind": "reembed", "params": {"model": "b"}}, headers=_headers())
        assert (r.status_code, r.json()["detail"]["error"]) == (409, "already_embedded")
    _assert_store_holds_b(sqlite_url, checkpoints, make_tracklet, seeds)
    # A server (re)started with the old --checkpoint serves the re-embedded store's model from
    # its model directory instead of refusing to start.
    restarted = thread_server(settings_for(checkpoints.a, sqlite_url, keep_frames=True, model_dir=model_dir))
    assert restarted.client().stats()["fingerprint"] == checkpoints.fingerprint_b
    restarted.stop()
    # Back to A is a job like any other, here through the Python client.
    with s.client() as client:
        back = client.wait_job(client.start_reembed_job("a")["id"], timeout=120, interval=0.05)
        assert (back["state"], back["progress"]["replaced"]) == ("succeeded", 6)
        assert client.stats()["fingerprint"] == checkpoints.fingerprint_a
    with open_store(sqlite_url) as store:  # the staged steps are gone
        assert [store.get_blob(f"reembed/{job['id']}/{i:06d}") for i in range(3)] == [None] * 3


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"model": "nope"}, 422, "model_not_found"),
        ({"model": "../b"}, 422, "invalid_model"),
        ({"model": "/etc"}, 422, "invalid_model"),
        ({"model": 5}, 422, "invalid_model"),
        ({}, 422, "invalid_model"),
        ({"model": "b", "batch": 4}, 422, "invalid_params"),
        ({"model": "a"}, 409, "already_embedded"),
    ],
)
def test_bad_reembed_requests_are_refused_with_a_stable_code(
    thread_server, checkpoints, sqlite_url: str, model_dir: Path, params: dict[str, Any], status: int, code: str
) -> None:
    (model_dir / "empty").mkdir()
    s = thread_server(settings_for(checkpoints.a, sqlite_url, keep_frames=True, model_dir=model_dir))
    r = httpx.post(f"{s.url}/v1/jobs", json={"kind": "reembed", "params": params}, headers=_headers())
    assert (r.status_code, r.json()["detail"]["error"]) == (status, code), r.text
    assert httpx.get(f"{s.url}/v1/jobs", headers=_headers(READ_KEY)).json()["items"] == []


def test_reembed_needs_a_model_dir_kept_frames_and_one_job_at_a_time(
    thread_server, checkpoints, sqlite_url: str, tmp_path: Path, model_dir: Path, make_tracklet
) -> None:
    bare = thread_server(settings_for(checkpoints.a, f"sqlite:///{tmp_path / 'bare.sqlite'}"))
    r = httpx.post(f"{bare.url}/v1/jobs", json={"kind": "reembed", "params": {"model": "b"}}, headers=_headers())
    assert (r.status_code, r.json()["detail"]["error"]) == (422, "reembed_disabled")
    assert "--model-dir" in r.json()["detail"]["message"]
    no_frames = thread_server(settings_for(checkpoints.a, f"sqlite:///{tmp_path / 'nf.sqlite'}", model_dir=model_dir))
    _enroll(no_frames.url, make_tracklet, {"x": 1})
    r = httpx.post(f"{no_frames.url}/v1/jobs", json={"kind": "reembed", "params": {"model": "b"}}, headers=_headers())
    assert (r.status_code, r.json()["detail"]["error"]) == (422, "frames_not_kept")
    assert "--keep-frames" in r.json()["detail"]["message"]
    # A runner that looks for work once a minute leaves the first job queued.
    idle = thread_server(settings_for(checkpoints.a, sqlite_url, keep_frames=True, model_dir=model_dir,
                                      job_poll_s=60.0))
    _start_reembed(idle.url)
    r = httpx.post(f"{idle.url}/v1/jobs", json={"kind": "reembed", "params": {"model": "b"}}, headers=_headers())
    assert (r.status_code, r.json()["detail"]["error"]) == (409, "reembed_running")


def test_a_reembed_resumes_after_a_stop_and_catches_up_with_writes_made_meanwhile(
    thread_server, opened_runtime, checkpoints, sqlite_url: str, model_dir: Path, make_tracklet
) -> None:
    """The job is run here step by step with the runner's own code: stopped after its first step
    (as a server shutting down), then the gallery changes behind and ahead of its cursor, then it
    resumes from the saved progress and switches with exactly the gallery of that moment."""
    settings = settings_for(checkpoints.a, sqlite_url, keep_frames=True, model_dir=model_dir, job_chunk_records=2)
    runtime = opened_runtime(settings)
    runtime.restore_gallery()
    s = thread_server(settings, lifespan="off", runtime=runtime)  # no runner thread: this test runs the job
    seeds = {f"t{i}": 500 + i for i in range(5)}
    _enroll(s.url, make_tracklet, seeds)
    location = _start_reembed(s.url)
    runner = JobRunner(runtime)
    job = runner.claim()
    assert job is not None and location.endswith(job.id)
    ctx = JobContext(runtime, job, runner.write, stopping=lambda: True)
    with pytest.raises(Stopping):
        ReembedJob.run(ctx)
    runner.write(ctx.job, owner=None, lease_until=0.0)  # what the runner does on Stopping
    saved = runtime.store.get_job(job.id)
    assert saved is not None and saved.state == "running"
    assert (saved.progress["phase"], saved.progress["steps"], saved.progress["embedded"]) == ("embed", 1, 2)
    assert runtime.encoder.fingerprint == checkpoints.fingerprint_a  # nothing switched yet

    assert httpx.delete(f"{s.url}/v1/tracklets/t0", headers=_headers()).status_code == 200  # staged already
    assert httpx.delete(f"{s.url}/v1/tracklets/t3", headers=_headers()).status_code == 200  # not yet reached
    del seeds["t0"], seeds["t3"]
    late = {"late1": 601, "late2": 602}
    _enroll(s.url, make_tracklet, late)
    seeds.update(late)

    assert runner.run_one()
    done = runtime.store.get_job(job.id)
    assert done is not None and done.state == "succeeded", done
    assert (done.progress["replaced"], done.progress["embedded"]) == (5, 2 + 4)  # then t2, t4, late1, late2
    _assert_store_holds_b(sqlite_url, checkpoints, make_tracklet, seeds)
    assert runtime.encoder.fingerprint == checkpoints.fingerprint_b
    assert runtime.gallery is not None and len(runtime.gallery) == 5
    files = [("frames", (n, d, "image/png")) for n, d in make_tracklet(602)]
    top = httpx.post(f"{s.url}/v1/query", data={"top_k": "1"}, files=files, headers=_headers(READ_KEY)).json()
    assert top["results"][0]["tracklets"][0]["tracklet_id"] == "late2"


def test_replicas_follow_a_reembed_live_and_one_without_the_model_stops_being_ready(
    thread_server, checkpoints, redis_server, redis_prefix: str, model_dir: Path, tmp_path: Path, make_tracklet
) -> None:
    """Two replicas on one Redis store: the job runs on whichever claims it, both switch to B
    without a restart, and a tracklet enrolled through one after the switch is answered by the
    other. A third replica without the model directory cannot follow: /readyz says why."""
    common = dict(keep_frames=True, job_poll_s=0.05, redis_prefix=redis_prefix, sync_interval=0.1)
    a = thread_server(settings_for(checkpoints.a, redis_server.url, model_dir=model_dir, **common))
    b = thread_server(settings_for(checkpoints.a, redis_server.url, model_dir=model_dir, **common))
    lost = thread_server(settings_for(checkpoints.a, redis_server.url, **common))
    seeds = {f"r{i}": 700 + i for i in range(4)}
    _enroll(a.url, make_tracklet, seeds)
    location = _start_reembed(b.url)
    with httpx.Client(base_url=a.url, timeout=60) as http:
        job = wait_job(http, location)
    assert job["state"] == "succeeded", job
    deadline = time.monotonic() + 30
    for server in (a, b):
        while server.client().stats()["fingerprint"] != checkpoints.fingerprint_b:
            assert time.monotonic() < deadline, "a replica did not switch to the new checkpoint"
            time.sleep(0.05)
    _enroll(a.url, make_tracklet, {"new": 777})
    files = [("frames", (n, d, "image/png")) for n, d in make_tracklet(777)]
    deadline = time.monotonic() + 5
    while True:
        top = httpx.post(f"{b.url}/v1/query", data={"top_k": "1"}, files=files, headers=_headers(READ_KEY)).json()
        if top["results"] and top["results"][0]["tracklets"][0]["tracklet_id"] == "new":
            break
        assert time.monotonic() < deadline, top
        time.sleep(0.05)
    assert top["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    deadline = time.monotonic() + 30
    while (r := httpx.get(f"{lost.url}/readyz")).status_code == 200:
        assert time.monotonic() < deadline, "the replica without the model stayed ready"
        time.sleep(0.05)
    assert r.status_code == 503 and "model directory" in r.text and checkpoints.fingerprint_b in r.text


def test_a_replica_not_yet_switched_refuses_enrollments_with_503_and_keeps_answering(
    thread_server, checkpoints, sqlite_url: str, model_dir: Path, make_tracklet
) -> None:
    """Between the store's switch and a replica's (its next feed poll), the replica's encoder is
    the old one: an enrollment would store a descriptor of the wrong checkpoint, so the store
    refuses it and the API answers 503 ``model_switching`` with Retry-After; queries still get
    answers consistent with the replica's own model."""
    a = thread_server(settings_for(checkpoints.a, sqlite_url, keep_frames=True, model_dir=model_dir,
                                   job_poll_s=0.05))
    seeds = {f"s{i}": 800 + i for i in range(3)}
    _enroll(a.url, make_tracklet, seeds)
    slow = thread_server(settings_for(checkpoints.a, sqlite_url, keep_frames=True, sync_interval=60.0))
    with httpx.Client(base_url=a.url, timeout=60) as http:
        assert wait_job(http, _start_reembed(a.url))["state"] == "succeeded"
    files = [("frames", (n, d, "image/png")) for n, d in make_tracklet(899)]
    r = httpx.post(f"{slow.url}/v1/tracklets", data={"identity": "late", "tracklet_id": "late"}, files=files,
                   headers=_headers())
    assert (r.status_code, r.json()["detail"]["error"]) == (503, "model_switching"), r.text
    assert r.headers["retry-after"] == "1" and checkpoints.fingerprint_b in r.json()["detail"]["message"]
    files = [("frames", (n, d, "image/png")) for n, d in make_tracklet(801)]
    top = httpx.post(f"{slow.url}/v1/query", data={"top_k": "1"}, files=files, headers=_headers(READ_KEY))
    assert top.status_code == 200 and top.json()["results"][0]["tracklets"][0]["tracklet_id"] == "s1"
    with open_store(sqlite_url) as store:
        assert store.get("late") is None and store.info().fingerprint == checkpoints.fingerprint_b


def test_an_onnx_server_reembeds_to_an_exported_model(thread_server, checkpoints, sqlite_url: str,
                                                      tmp_path: Path, make_tracklet) -> None:
    """With ``--backend onnx`` the model directory holds exported ``.onnx`` files, and the switch
    loads one into ONNX Runtime."""
    from model.export import export_onnx

    models = tmp_path / "onnx-models"
    models.mkdir()
    export_onnx(checkpoints.a, models / "a.onnx")
    export_onnx(checkpoints.b, models / "b.onnx")
    s = thread_server(settings_for(None, sqlite_url, backend="onnx", model=models / "a.onnx", keep_frames=True,
                                   model_dir=models, job_poll_s=0.05))
    seeds = {"o1": 901, "o2": 902}
    _enroll(s.url, make_tracklet, seeds)
    r = httpx.post(f"{s.url}/v1/jobs", json={"kind": "reembed", "params": {"model": "b"}}, headers=_headers())
    assert (r.status_code, r.json()["detail"]["error"]) == (422, "model_not_found")  # a checkpoint name
    with httpx.Client(base_url=s.url, timeout=60) as http:
        job = wait_job(http, _start_reembed(s.url, "b.onnx"))
        assert job["state"] == "succeeded", job
        stats = http.get("/v1/stats", headers=_headers(READ_KEY)).json()
    assert (stats["fingerprint"], stats["backend"]) == (checkpoints.fingerprint_b, "onnx")
    _assert_store_holds_b(sqlite_url, checkpoints, make_tracklet, seeds)


def test_a_reembed_stopped_during_its_switch_resumes_with_what_was_enrolled_late(
    thread_server, opened_runtime, checkpoints, sqlite_url: str, model_dir: Path, make_tracklet
) -> None:
    """A tracklet stored after the last staged step is embedded by the switch itself; a stop
    there (the lease renewal before the swap) must not lose it on resume."""
    settings = settings_for(checkpoints.a, sqlite_url, keep_frames=True, model_dir=model_dir, job_chunk_records=2)
    runtime = opened_runtime(settings)
    runtime.restore_gallery()
    s = thread_server(settings, lifespan="off", runtime=runtime)
    seeds = {f"u{i}": 520 + i for i in range(5)}
    _enroll(s.url, make_tracklet, seeds)
    _start_reembed(s.url)
    runner = JobRunner(runtime)
    job = runner.claim()
    assert job is not None
    saves = 0

    def stopping() -> bool:
        nonlocal saves
        saves += 1
        if saves == 3:  # the embed pass's last save (steps of 2, 2 and 1): then a late enrollment
            _enroll(s.url, make_tracklet, {"late": 650})
        return saves == 4  # the switch's lease renewal, after it embedded "late"

    ctx = JobContext(runtime, job, runner.write, stopping=stopping)
    with pytest.raises(Stopping):
        ReembedJob.run(ctx)
    runner.write(ctx.job, owner=None, lease_until=0.0)
    assert runtime.store.info().fingerprint == checkpoints.fingerprint_a  # stopped before the swap
    assert runner.run_one()
    done = runtime.store.get_job(job.id)
    assert done is not None and done.state == "succeeded", done
    assert (done.progress["replaced"], done.progress["embedded"]) == (6, 6)
    seeds["late"] = 650
    _assert_store_holds_b(sqlite_url, checkpoints, make_tracklet, seeds)
