"""Start-up rules (keys, checkpoint, fingerprint, readiness) and ``sasreid reembed``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index.store import Record, open_store
from service.cli import main


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("SASREID_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _fill(server: Any, make_tracklet: Callable[..., Any], n: int = 3) -> dict[str, int]:
    client = server.client()
    for i in range(n):
        client.enroll(make_tracklet(100 + i), f"id{i}", tracklet_id=f"t{i}", camera="c1")
    return {f"t{i}": 100 + i for i in range(n)}


def test_refuses_to_start_without_keys(clean_env: pytest.MonkeyPatch, checkpoints: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--checkpoint", str(checkpoints.a), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "SASREID_WRITE_KEYS" in err and "SASREID_AUTH=off" in err
    assert not (tmp_path / "gallery.sqlite").exists()  # refused before touching the store


def test_refuses_a_missing_checkpoint(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("SASREID_WRITE_KEYS", "k")
    code = main(["serve", "--checkpoint", str(tmp_path / "nope"), "--data-dir", str(tmp_path)])
    assert code == 2
    assert "cannot load the checkpoint" in capsys.readouterr().err


def test_auth_off_explicitly(checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any],
                             thread_server: Callable[..., Any], make_tracklet: Callable[..., Any]) -> None:
    server = thread_server(make_settings(checkpoints.a, sqlite_url, auth="off", write_keys="", read_keys=""))
    keyless = server.client(key=None)
    assert keyless.enroll(make_tracklet(1), "x", tracklet_id="x1").created
    assert keyless.stats()["tracklets"] == 1


def test_readyz_is_503_until_the_index_is_restored(
    checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any],
    thread_server: Callable[..., Any], opened_runtime: Callable[..., Any],
) -> None:
    settings = make_settings(checkpoints.a, sqlite_url)
    runtime = opened_runtime(settings)
    vec = np.ones(runtime.encoder.dim, dtype=np.float32) / np.sqrt(runtime.encoder.dim)
    runtime.store.put(Record("pre", "p", 0, runtime.encoder.fingerprint, vec, "h"))
    # No lifespan: nothing restores the index until the test does.
    server = thread_server(settings, lifespan="off", runtime=runtime, wait_ready=False)
    headers = {"X-API-Key": "test-write-key"}
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    not_ready = httpx.get(f"{server.url}/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["detail"]["error"] == "not_ready"
    assert httpx.post(f"{server.url}/query", json={"tracklet_id": "pre"}, headers=headers).status_code == 503
    assert httpx.get(f"{server.url}/stats", headers=headers).json()["ready"] is False
    runtime.restore_gallery()
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "tracklets": 1}
    assert httpx.get(f"{server.url}/metrics").text.count("sasreid_ready 1.0") == 1


def test_fingerprint_mismatch_then_reembed(
    clean_env: pytest.MonkeyPatch, checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any],
    thread_server: Callable[..., Any], make_tracklet: Callable[..., Any], capsys: pytest.CaptureFixture[str],
) -> None:
    server = thread_server(make_settings(checkpoints.a, sqlite_url, keep_frames=True))
    seeds = _fill(server, make_tracklet)
    before = server.client().stats()
    server.stop()

    # Checkpoint B refuses the store filled with A, and says what to do.
    clean_env.setenv("SASREID_WRITE_KEYS", "k")
    code = main(["serve", "--checkpoint", str(checkpoints.b), "--store", sqlite_url])
    err = capsys.readouterr().err
    assert code == 2
    assert "sasreid reembed" in err and checkpoints.fingerprint_a in err and checkpoints.fingerprint_b in err

    assert main(["reembed", "--checkpoint", str(checkpoints.b), "--store", sqlite_url]) == 0
    assert "re-embedded 3 tracklets" in capsys.readouterr().out
    with open_store(sqlite_url) as store:
        assert store.info().fingerprint == checkpoints.fingerprint_b
        assert {r.fingerprint for r in store.iter_records()} == {checkpoints.fingerprint_b}
    # Running it again has nothing to do.
    assert main(["reembed", "--checkpoint", str(checkpoints.b), "--store", sqlite_url]) == 0
    assert "nothing to do" in capsys.readouterr().out

    # B now serves the same gallery, and its descriptors are B's: the frames find their tracklet.
    server_b = thread_server(make_settings(checkpoints.b, sqlite_url, keep_frames=True))
    client = server_b.client()
    stats = client.stats()
    assert stats["fingerprint"] == checkpoints.fingerprint_b
    assert (stats["tracklets"], stats["identities"]) == (before["tracklets"], before["identities"])
    for tid, seed in seeds.items():
        top = client.query(frames=make_tracklet(seed), top_k=1)["results"][0]
        assert top["tracklets"][0]["tracklet_id"] == tid
        assert top["score"] == pytest.approx(1.0, abs=1e-4)


def test_reembed_without_kept_frames_says_it_cannot(
    checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any], thread_server: Callable[..., Any],
    make_tracklet: Callable[..., Any], capsys: pytest.CaptureFixture[str],
) -> None:
    server = thread_server(make_settings(checkpoints.a, sqlite_url, keep_frames=False))
    _fill(server, make_tracklet, n=2)
    server.stop()
    assert main(["reembed", "--checkpoint", str(checkpoints.b), "--store", sqlite_url]) == 2
    err = capsys.readouterr().err
    assert "no kept frames" in err and "--keep-frames" in err and "Re-enroll" in err
    with open_store(sqlite_url) as store:
        assert store.info().fingerprint == checkpoints.fingerprint_a  # untouched


def test_reranking_can_be_disabled(checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any],
                                   thread_server: Callable[..., Any], make_tracklet: Callable[..., Any]) -> None:
    from service.client import ApiClientError

    server = thread_server(make_settings(checkpoints.a, sqlite_url, graph_k=0))
    _fill(server, make_tracklet, n=2)
    client = server.client()
    assert client.query(tracklet_id="t0")["results"][0]["identity"] == "id1"
    with pytest.raises(ApiClientError) as disabled:
        client.query(tracklet_id="t0", rerank=True)
    assert disabled.value.status == 422 and disabled.value.error == "rerank_disabled"


def test_snapshot_restart(checkpoints: Any, sqlite_url: str, tmp_path: Path, make_settings: Callable[..., Any],
                          thread_server: Callable[..., Any], make_tracklet: Callable[..., Any],
                          caplog: pytest.LogCaptureFixture, index_kind: str) -> None:
    """With a snapshot directory a restart loads the index from the snapshot written at shutdown; a
    store written to since then (by a server without snapshots) makes it rebuild from the store."""
    if index_kind == "milvus":
        # Settings refuse snapshot_dir with milvus (tests/index/test_vector_index.py); its restart
        # without re-indexing is tests/service/test_milvus_crash.py.
        pytest.skip("snapshots are for the FAISS index kinds")
    snapshots = tmp_path / "snapshots"
    with_snapshots = make_settings(checkpoints.a, sqlite_url, snapshot_dir=snapshots)
    server = thread_server(with_snapshots)
    seeds = _fill(server, make_tracklet)
    server.stop()
    assert (snapshots / "manifest.json").is_file()

    caplog.set_level(logging.INFO, logger="index.snapshot")
    again = thread_server(with_snapshots)
    assert "gallery loaded from snapshot" in caplog.text
    client = again.client()
    assert (client.stats()["tracklets"], client.stats()["indexed_tracklets"]) == (3, 3)
    assert client.query(frames=make_tracklet(seeds["t1"]), top_k=1)["results"][0]["identity"] == "id1"
    again.stop()

    plain = thread_server(make_settings(checkpoints.a, sqlite_url))
    plain.client().enroll(make_tracklet(7), "late", tracklet_id="late")
    plain.stop()
    caplog.clear()
    rebuilt = thread_server(with_snapshots).client()
    assert "not used" in caplog.text and "gallery loaded from snapshot" not in caplog.text
    assert (rebuilt.stats()["tracklets"], rebuilt.stats()["indexed_tracklets"]) == (4, 4)
    assert rebuilt.query(frames=make_tracklet(7), top_k=1)["results"][0]["identity"] == "late"
