"""The commands of service/README_API.md, run exactly as written (host:port substituted).

Each ```bash block starts with a ``# name`` comment; the block named ``serve`` is started in the
background, every other block runs with ``bash -e`` and its output is checked here. A block the
test does not know fails the test, so the README cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.api.versioning import DEPRECATION_HEADER

README = Path(__file__).resolve().parents[2] / "service" / "README_API.md"
HOSTPORT = "127.0.0.1:8000"


def _blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        first = block.partition("\n")[0]
        assert first.startswith("# "), f"README bash block without a '# name' line: {block[:80]!r}"
        out.append((first[2:].strip(), block))
    return out


def _json(out: str) -> Any:
    return json.loads(out)


def _checks(fingerprint: str, fingerprint_v2: str) -> dict[str, Callable[[str], None]]:
    def readyz(out: str) -> None:
        assert _json(out)["ready"] is True

    def enroll_alice(out: str) -> None:
        rec = _json(out)
        assert (rec["tracklet_id"], rec["identity"], rec["camera"], rec["platform"]) == (
            "alice_cam1", "alice", "cam1", "ground")
        assert rec["metadata"] == {"site": "gate 3"} and rec["num_frames"] == 2
        assert rec["fingerprint"] == fingerprint

    def enroll_bob(out: str) -> None:
        assert _json(out)["tracklet_id"] == "bob_cam2"

    def import_descriptors(out: str) -> None:
        assert _json(out) == {"created": 2, "existing": 0}

    def query_frames(out: str) -> None:
        ans = _json(out)
        assert ans["results"][0]["identity"] == "alice"
        assert ans["results"][0]["tracklets"][0]["tracklet_id"] == "alice_cam1"
        assert ans["reranked"] is False

    def query_tracklet(out: str) -> None:
        ans = _json(out)
        assert ans["reranked"] is True and ans["results"]
        tracklets = [t for r in ans["results"] for t in r["tracklets"]]
        assert all(t["platform"] == "aerial" for t in tracklets)
        assert "alice_cam1" not in [t["tracklet_id"] for t in tracklets]

    def deprecated_alias(out: str) -> None:
        headers = dict(line.split(": ", 1) for line in out.strip().splitlines())
        assert {k.lower(): v.strip() for k, v in headers.items()} == {
            "deprecation": DEPRECATION_HEADER, "link": '</v1/stats>; rel="successor-version"'}

    def query_time_range(out: str) -> None:
        ans = _json(out)
        assert [t["tracklet_id"] for r in ans["results"] for t in r["tracklets"]] == ["alice_cam1"]

    def query_batch(out: str) -> None:
        first, second = _json(out)["answers"]
        assert first["tracklet_id"] == "alice_cam1" and second["tracklet_id"] == "bob_cam2"
        assert first["results"] and "alice_cam1" not in [t["tracklet_id"] for r in first["results"] for t in r["tracklets"]]
        assert [t["platform"] for r in second["results"] for t in r["tracklets"]] == ["ground"]

    def query_batch_frames(out: str) -> None:
        first, second = _json(out)["answers"]
        assert first["tracklet_id"] is None and first["results"][0]["identity"] == "alice"
        assert second["tracklet_id"] == "bob_cam2" and len(second["results"]) == 3

    def get_tracklet(out: str) -> None:
        assert _json(out)["identity"] == "alice"

    def list_tracklets(out: str) -> None:
        page = _json(out)
        assert [t["tracklet_id"] for t in page["items"]] == ["bob_cam2", "imported_a_1"]
        assert page["next_cursor"] and page["limit"] == 2

    def list_tracklets_next(out: str) -> None:
        page = _json(out)
        assert [t["tracklet_id"] for t in page["items"]] == ["imported_b_1"] and page["next_cursor"] is None

    def get_frame(out: str) -> None:
        assert out.strip() == "200 image/jpeg"

    def list_identities(out: str) -> None:
        page = _json(out)
        assert page["total"] == 4
        assert [i["identity"] for i in page["items"]] == ["alice", "bob", "imported_a", "imported_b"]

    def get_identity(out: str) -> None:
        assert [t["tracklet_id"] for t in _json(out)["tracklets"]] == ["alice_cam1"]

    def stats(out: str) -> None:
        s = _json(out)
        assert (s["tracklets"], s["identities"], s["indexed_tracklets"]) == (4, 4, 4)
        assert s["fingerprint"] == fingerprint

    def metrics(out: str) -> None:
        assert out.strip() == "sasreid_gallery_tracklets 4.0"

    def metrics_stages(out: str) -> None:
        # 7 queries so far: 2 from frames (decode + embed), 1 re-ranked.
        counts = {line.split('"')[1]: float(line.split()[-1]) for line in out.strip().splitlines()}
        assert counts == {"decode": 2, "embed": 2, "search": 7, "rerank": 1}, counts

    def delete_tracklet(out: str) -> None:
        assert _json(out) == {"tracklet_id": "bob_cam2", "deleted": True}

    def delete_identity(out: str) -> None:
        assert _json(out) == {"identity": "alice", "deleted": ["alice_cam1"]}

    def start_import_job(out: str) -> None:
        job = _json(out)
        assert job["kind"] == "import" and job["state"] in ("queued", "running")
        assert job["params"] == {"source": "more-descriptors.jsonl"}

    def follow_import_job(out: str) -> None:
        job = _json(out)
        assert job["state"] == "succeeded", job
        assert {k: job["progress"][k] for k in ("records", "created", "existing")} == {
            "records": 2, "created": 2, "existing": 0}

    def remove_imported(out: str) -> None:
        codes, _, record = out.partition("{")
        assert codes.split() == ["200"] * 4
        assert _json("{" + record)["fingerprint"] == fingerprint

    def start_reembed_job(out: str) -> None:
        job = _json(out)
        assert job["kind"] == "reembed" and job["state"] in ("queued", "running")
        assert job["params"] == {"model": "sas-vpreid-v2", "fingerprint": fingerprint_v2}

    def follow_reembed_job(out: str) -> None:
        job_line, stats_line = out.strip().splitlines()
        job = _json(job_line)
        assert job["state"] == "succeeded", job
        assert {k: job["progress"][k] for k in ("phase", "embedded", "replaced", "to_fingerprint")} == {
            "phase": "done", "embedded": 1, "replaced": 1, "to_fingerprint": fingerprint_v2}
        s = _json(stats_line)
        assert (s["fingerprint"], s["tracklets"], s["indexed_tracklets"]) == (fingerprint_v2, 1, 1)

    return {
        "remove imported descriptors": remove_imported,
        "start reembed job": start_reembed_job,
        "follow reembed job": follow_reembed_job,
        "readyz": readyz,
        "deprecated alias": deprecated_alias,
        "query time range": query_time_range,
        "query batch": query_batch,
        "query batch with frames": query_batch_frames,
        "list tracklets": list_tracklets,
        "list tracklets next page": list_tracklets_next,
        "metrics stages": metrics_stages,
        "enroll alice": enroll_alice,
        "enroll bob": enroll_bob,
        "import descriptors": import_descriptors,
        "query with frames": query_frames,
        "query by tracklet": query_tracklet,
        "get tracklet": get_tracklet,
        "get frame thumbnail": get_frame,
        "list identities": list_identities,
        "get identity": get_identity,
        "stats": stats,
        "metrics": metrics,
        "delete tracklet": delete_tracklet,
        "delete identity": delete_identity,
        "start import job": start_import_job,
        "follow import job": follow_import_job,
    }


def _workdir(root: Path, checkpoint: Path, checkpoint_v2: Path, fingerprint: str, dim: int,
             make_image: Callable[..., bytes]) -> None:
    """What the README assumes the user has: a checkpoint, person crops, a descriptor file."""
    shutil.copytree(checkpoint, root / "checkpoints" / "sas-vpreid")
    shutil.copytree(checkpoint_v2, root / "checkpoints" / "sas-vpreid-v2")  # what a reembed job switches to
    for person, seed in (("alice", 1), ("bob", 2)):
        (root / "crops" / person).mkdir(parents=True)
        for i in (1, 2):
            (root / "crops" / person / f"{i:04d}.jpg").write_bytes(make_image(seed * 10 + i, "JPEG"))
    (root / "query").mkdir()
    for i in (1, 2):  # the query tracklet is alice's crops again
        shutil.copy(root / "crops" / "alice" / f"{i:04d}.jpg", root / "query" / f"{i:04d}.jpg")
    rng = np.random.default_rng(0)
    records = []
    for name in ("imported_a", "imported_b"):
        vec = rng.standard_normal(dim)
        records.append({"tracklet_id": f"{name}_1", "identity": name, "platform": "aerial", "camera": "cam5",
                        "descriptor": (vec / np.linalg.norm(vec)).tolist(), "fingerprint": fingerprint})
    (root / "descriptors.json").write_text(json.dumps(records))
    (root / "imports").mkdir()
    with (root / "imports" / "more-descriptors.jsonl").open("w") as f:
        for name in ("imported_c", "imported_d"):
            vec = rng.standard_normal(dim)
            f.write(json.dumps({"tracklet_id": f"{name}_1", "identity": name, "descriptor": (vec / np.linalg.norm(vec)).tolist(),
                                "fingerprint": fingerprint}) + "\n")


def test_readme_commands_work_as_written(
    tmp_path: Path, checkpoints: Any, make_image: Callable[..., bytes]
) -> None:
    from model import load_checkpoint

    dim = load_checkpoint(checkpoints.a).descriptor_dim
    _workdir(tmp_path, checkpoints.a, checkpoints.b, checkpoints.fingerprint_a, dim, make_image)
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks = [
        (name, block.replace(HOSTPORT, f"127.0.0.1:{port}").replace("--port 8000", f"--port {port}"))
        for name, block in _blocks()
    ]
    names = [n for n, _ in blocks]
    checks = _checks(checkpoints.fingerprint_a, checkpoints.fingerprint_b)
    assert names[0] == "serve" and set(names[1:]) == set(checks), names

    env = {k: v for k, v in os.environ.items() if not k.startswith("SASREID_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # where `sasreid` lives
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(["bash", "-e", "-c", blocks[0][1]], cwd=tmp_path, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "README server did not become ready"
            time.sleep(0.1)
        for name, block in blocks[1:]:
            run = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=120)
            assert run.returncode == 0, f"{name}: {run.stderr}"
            try:
                checks[name](run.stdout)
            except AssertionError as exc:
                raise AssertionError(f"README step {name!r} answered {run.stdout[:500]!r}") from exc
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def _emitted_error_codes() -> set[str]:
    """Every ``error`` code the service can answer with, read from its source."""
    from service.core.errors import _HTTP_CODES

    root = README.parent
    codes = set(_HTTP_CODES.values()) | {"http_error"}  # http_error: the fallback for other statuses
    pattern = re.compile(r"ApiError\(\s*(?:\d{3}|\w+)\s*,\s*\"([a-z_]+)\"")
    for path in root.rglob("*.py"):
        codes |= set(pattern.findall(path.read_text()))
    return codes


def test_readme_lists_every_error_code() -> None:
    text = README.read_text()
    errors = text[text.index("## Errors"): text.index("## Hardening")]
    listed = set(re.findall(r"`([a-z]+(?:_[a-z]+)+|forbidden)`", errors))
    emitted = _emitted_error_codes()
    assert len(emitted) > 40  # the scan found the codes (a broken pattern would find none)
    assert sorted(emitted - listed) == []
    assert sorted(listed - emitted - {"max_request_pixels"}) == []  # no code listed that none emits
