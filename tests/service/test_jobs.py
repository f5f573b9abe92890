"""Long jobs (``/v1/jobs``): a bulk import from a JSON-lines file runs in the background, reports
its progress, and survives a clean stop and a kill -9 of the server (real app, real store)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index.store import Job, open_store
from tests.service.conftest import READ_KEY, WRITE_KEY, settings_for


def write_jsonl(path: Path, n: int, dim: int, fingerprint: str, start: int = 0, seed: int = 0,
                blank_every: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    with path.open("w") as f:
        for i in range(start, start + n):
            d = rng.standard_normal(dim)
            d /= np.linalg.norm(d)
            row = {"tracklet_id": f"imp_{i}", "identity": f"person_{i % 7}", "descriptor": d.tolist(),
                   "fingerprint": fingerprint, "camera": f"c{i % 3}", "metadata": {"line": i}}
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            if blank_every and (i + 1) % blank_every == 0:
                f.write("\n")
    return rows


def headers(key: str = WRITE_KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def wait_job(http: httpx.Client, url: str, states: tuple[str, ...] = ("succeeded", "failed"),
             timeout: float = 120.0, until: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(url, headers=headers(READ_KEY)).json()
        if job["state"] in states and (until is None or until(job)):
            return job
        assert time.monotonic() < deadline, f"job still {job['state']} after {timeout}s: {job}"
        time.sleep(0.05)


@pytest.fixture
def server(thread_server, checkpoints, sqlite_url: str, tmp_path: Path):
    imports = tmp_path / "imports"
    imports.mkdir()
    s = thread_server(settings_for(checkpoints.a, sqlite_url, import_dir=imports, job_chunk_records=7,
                                   job_poll_s=0.05))
    dim = s.client().stats()["dim"]
    return s, imports, dim


def test_import_job_runs_in_the_background_and_reports_progress(server, checkpoints) -> None:
    s, imports, dim = server
    rows = write_jsonl(imports / "batch.jsonl", 30, dim, checkpoints.fingerprint_a, blank_every=10)
    with httpx.Client(base_url=s.url, timeout=30) as http:
        r = http.post("/v1/jobs", json={"kind": "import", "params": {"source": "batch.jsonl"}}, headers=headers())
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["kind"] == "import" and job["state"] in ("queued", "running")
        assert job["progress"]["bytes_total"] == (imports / "batch.jsonl").stat().st_size
        done = wait_job(http, r.headers["location"])
        assert done["state"] == "succeeded", done
        p = done["progress"]
        assert (p["records"], p["created"], p["existing"], p["lines"]) == (30, 30, 0, 33)
        assert p["offset"] == p["bytes_total"] == (imports / "batch.jsonl").stat().st_size
        got = http.get("/v1/tracklets/imp_17", headers=headers(READ_KEY)).json()
        assert (got["identity"], got["camera"], got["metadata"]) == ("person_3", "c2", {"line": 17})
        # Imported descriptors are searchable: indexed, and a query by one ranks the others.
        assert s.client().stats()["indexed_tracklets"] == 30
        q = http.post("/v1/query", json={"tracklet_id": "imp_17", "top_k": 7}, headers=headers(READ_KEY))
        assert q.status_code == 200, q.text
        assert sum(len(r["tracklets"]) for r in q.json()["results"]) > 0
        # The same file again, through the Python client: idempotent, every record already stored.
        with s.client() as client:
            again = client.start_import_job("./batch.jsonl")
            assert again["params"] == {"source": "batch.jsonl"}
            second = client.wait_job(again["id"], timeout=120, interval=0.05)
        assert (second["state"], second["progress"]["created"], second["progress"]["existing"]) == ("succeeded", 0, 30)
        listed = http.get("/v1/jobs", headers=headers(READ_KEY)).json()["items"]
        assert [j["id"] for j in listed] == [again["id"], job["id"]]
        assert len(rows) == 30 and s.client().stats()["tracklets"] == 30


def test_a_bad_line_fails_the_job_with_its_line_number_and_keeps_earlier_steps(server, checkpoints) -> None:
    s, imports, dim = server
    write_jsonl(imports / "bad.jsonl", 16, dim, checkpoints.fingerprint_a)
    lines = (imports / "bad.jsonl").read_text().splitlines()
    lines[14] = '{"tracklet_id": "x", "identity": "y"'  # line 15: truncated JSON
    (imports / "bad.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(imports / "good.jsonl", 9, dim, checkpoints.fingerprint_a, start=200)
    write_jsonl(imports / "other.jsonl", 3, dim, "some-other-checkpoint", start=100)
    # 9 good records, then 3 of another checkpoint: the second step (lines 8-12) is refused whole.
    (imports / "other_model.jsonl").write_text((imports / "good.jsonl").read_text() + (imports / "other.jsonl").read_text())
    with httpx.Client(base_url=s.url, timeout=30) as http:
        r = http.post("/v1/jobs", json={"kind": "import", "params": {"source": "bad.jsonl"}}, headers=headers())
        job = wait_job(http, r.headers["location"])
        assert job["state"] == "failed"
        assert job["error"]["error"] == "invalid_record" and job["error"]["line"] == 15
        assert "line 15" in job["error"]["message"]
        assert job["progress"]["records"] == 14  # two steps of 7 were stored before it
        assert s.client().stats()["tracklets"] == 14
        r = http.post("/v1/jobs", json={"kind": "import", "params": {"source": "other_model.jsonl"}}, headers=headers())
        job = wait_job(http, r.headers["location"])
        assert (job["state"], job["error"]["error"]) == ("failed", "fingerprint_mismatch")
        assert "lines 8-12: records[9]" in job["error"]["message"]
        assert job["progress"]["records"] == 7
        assert s.client().stats()["tracklets"] == 14 + 7


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"kind": "reindex"}, "unknown_job_kind"),
        ({"kind": "import", "params": {"source": "../outside.jsonl"}}, "invalid_source"),
        ({"kind": "import", "params": {"source": "/etc/passwd"}}, "invalid_source"),
        ({"kind": "import", "params": {"source": "missing.jsonl"}}, "source_not_found"),
        ({"kind": "import", "params": {}}, "invalid_source"),
        ({"kind": "import", "params": {"source": "a.jsonl", "extra": 1}}, "invalid_params"),
    ],
)
def test_bad_job_requests_are_refused_with_a_stable_code(server, body, code) -> None:
    s, imports, _ = server
    (imports.parent / "outside.jsonl").write_text("{}\n")
    (imports / "a.jsonl").write_text("")
    with httpx.Client(base_url=s.url, timeout=30) as http:
        r = http.post("/v1/jobs", json=body, headers=headers())
        assert r.status_code == 422, r.text
        assert r.json()["detail"]["error"] == code
        if code == "unknown_job_kind":
            assert "import" in r.json()["detail"]["message"]  # names the valid kinds
        assert http.get("/v1/jobs", headers=headers(READ_KEY)).json()["items"] == []


def test_jobs_need_keys_and_unknown_ids_are_404(server) -> None:
    s, imports, _ = server
    (imports / "a.jsonl").write_text("")
    with httpx.Client(base_url=s.url, timeout=30) as http:
        body = {"kind": "import", "params": {"source": "a.jsonl"}}
        assert http.post("/v1/jobs", json=body, headers=headers(READ_KEY)).status_code == 403
        assert http.post("/v1/jobs", json=body).status_code == 401
        assert http.get("/v1/jobs/nope", headers=headers(READ_KEY)).json()["detail"]["error"] == "job_not_found"
        assert http.get("/v1/jobs/a.b", headers=headers(READ_KEY)).status_code == 422


def test_without_an_import_dir_import_jobs_are_refused(thread_server, checkpoints, sqlite_url) -> None:
    s = thread_server(settings_for(checkpoints.a, sqlite_url))
    with httpx.Client(base_url=s.url, timeout=30) as http:
        r = http.post("/v1/jobs", json={"kind": "import", "params": {"source": "a.jsonl"}}, headers=headers())
        assert r.status_code == 422 and r.json()["detail"]["error"] == "imports_disabled"
        assert "--import-dir" in r.json()["detail"]["message"]


def test_an_import_survives_a_clean_stop_and_a_kill_9(process_server, checkpoints, sqlite_url, tmp_path) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    n = 6000
    env = {"SASREID_IMPORT_DIR": str(imports), "SASREID_JOB_CHUNK_RECORDS": "20", "SASREID_JOB_LEASE_S": "1",
           "SASREID_JOB_POLL_S": "0.1"}
    args = ["--checkpoint", str(checkpoints.a), "--store", sqlite_url]
    first = process_server(args, **env)
    dim = first.client().stats()["dim"]
    write_jsonl(imports / "big.jsonl", n, dim, checkpoints.fingerprint_a)
    with httpx.Client(base_url=first.url, timeout=30) as http:
        r = http.post("/v1/jobs", json={"kind": "import", "params": {"source": "big.jsonl"}}, headers=headers())
        location = r.headers["location"]
        wait_job(http, location, states=("running",), until=lambda j: j["progress"]["records"] >= 200)
    first.stop()  # SIGTERM: the job is released between two steps
    with open_store(sqlite_url) as store:
        job = store.get_job(location.rsplit("/", 1)[1])
        assert job is not None and job.state == "running" and job.owner is None
        stopped_at = job.progress["records"]
        assert 0 < stopped_at < n
    second = process_server(args, **env)
    with httpx.Client(base_url=second.url, timeout=30) as http:
        resumed = wait_job(http, location, states=("running", "succeeded"),
                           until=lambda j: j["progress"]["records"] >= stopped_at + 200)
        assert resumed["state"] == "running", "the import finished before the kill; make it longer"
    second.kill()
    third = process_server(args, **env)
    with httpx.Client(base_url=third.url, timeout=30) as http:
        done = wait_job(http, location, timeout=300)
    assert done["state"] == "succeeded", done
    p = done["progress"]
    assert p["records"] == n and p["created"] + p["existing"] == n
    assert p["existing"] <= 20  # at most the one step stored before the kill but not yet recorded
    stats = third.client().stats()
    assert stats["tracklets"] == stats["indexed_tracklets"] == n
    with open_store(sqlite_url) as store:
        assert store.get("imp_0") is not None and store.get(f"imp_{n - 1}") is not None


def test_finished_jobs_are_deleted_after_the_retention_and_running_ones_never(
        thread_server, checkpoints, sqlite_url: str, tmp_path: Path) -> None:
    """``job_retention_s``: the runner deletes a job that finished longer ago than that (its URL
    then answers 404 ``job_not_found``), while a job that is still queued stays however old."""
    imports = tmp_path / "imports"
    imports.mkdir()
    s = thread_server(settings_for(checkpoints.a, sqlite_url, import_dir=imports, job_poll_s=0.05,
                                   job_retention_s=1.0))
    write_jsonl(imports / "a.jsonl", 3, s.client().stats()["dim"], checkpoints.fingerprint_a)
    with httpx.Client(base_url=s.url, timeout=30) as http:
        r = http.post("/v1/jobs", json={"kind": "import", "params": {"source": "a.jsonl"}}, headers=headers())
        assert r.status_code == 202, r.text
        assert wait_job(http, r.headers["location"])["state"] == "succeeded"
        # A queued job of a kind this server does not run: never claimed, so never finished.
        with open_store(sqlite_url) as store:
            store.create_job(Job(id="old_queued", kind="not_a_kind", created_at=1.0, updated_at=1.0))
        deadline = time.monotonic() + 30
        while (gone := http.get(r.headers["location"], headers=headers(READ_KEY))).status_code == 200:
            assert time.monotonic() < deadline, "the finished job was not deleted after its retention"
            time.sleep(0.1)
        assert gone.status_code == 404 and gone.json()["detail"]["error"] == "job_not_found"
        assert [j["id"] for j in http.get("/v1/jobs", headers=headers(READ_KEY)).json()["items"]] == ["old_queued"]
        assert s.client().stats()["tracklets"] == 3  # deleting the job keeps what it imported
