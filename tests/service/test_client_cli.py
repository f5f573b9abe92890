"""``sasreid enroll`` and ``sasreid query`` against a real server, on a DetReIDX-layout folder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import main

WRITE = "test-write-key"
READ = "test-read-key"
MAX_FRAMES = 16


def _write_tracklet(folder: Path, seed: int, frames: int, aerial: bool, make_image: Callable[..., bytes]) -> None:
    folder.mkdir(parents=True)
    for i in range(frames):
        # DetReIDX names: fewer than 8 '_' fields = ground; aerial ones carry altitude, distance, pitch.
        pid = folder.parent.name
        name = f"{pid}_s1_{i:04d}_a_b_c_30.0_40.0_60_1_{i:04d}.jpg" if aerial else f"{pid}_{i:04d}.jpg"
        (folder / name).write_bytes(make_image(seed * 1000 + i, "JPEG"))


@pytest.fixture
def dataset(tmp_path: Path, make_image: Callable[..., bytes]) -> Path:
    root = tmp_path / "detreidx"
    case1 = root / "case1_aerial_to_ground"
    case2 = root / "case2_ground_to_aerial"
    _write_tracklet(case1 / "query" / "0001" / "0001_q1", 1, 2, True, make_image)
    _write_tracklet(case1 / "gallery" / "0001" / "0001_g1", 2, 2, False, make_image)
    _write_tracklet(case1 / "gallery" / "0002" / "0002_g1", 3, 20, False, make_image)  # > MAX_FRAMES
    _write_tracklet(case2 / "query" / "0002" / "0002_q2", 4, 2, False, make_image)
    _write_tracklet(case2 / "gallery" / "0001" / "0001_g2", 5, 3, True, make_image)
    return root


def test_enroll_and_query_cli(
    dataset: Path, checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any],
    thread_server: Callable[..., Any], capsys: pytest.CaptureFixture[str],
) -> None:
    server = thread_server(make_settings(checkpoints.a, sqlite_url, max_frames_per_tracklet=MAX_FRAMES))
    url = server.url

    assert main(["enroll", "--url", url, "--api-key", WRITE, "--cases", "case1", str(dataset)]) == 0
    assert "enrolled 2 new, 0 already stored, 0 failed" in capsys.readouterr().out
    # All cases: case1's tracklets are already there, case2's is new; a re-run changes nothing.
    assert main(["enroll", "--url", url, "--api-key", WRITE, str(dataset)]) == 0
    assert "enrolled 1 new, 2 already stored, 0 failed" in capsys.readouterr().out
    assert main(["enroll", "--url", url, "--api-key", WRITE, str(dataset)]) == 0
    assert "enrolled 0 new, 3 already stored, 0 failed" in capsys.readouterr().out

    client = server.client()
    long_one = client.get_tracklet("0002_g1")
    assert (long_one["identity"], long_one["platform"], long_one["num_frames"]) == ("0002", "ground", MAX_FRAMES)
    aerial = client.get_tracklet("0001_g2")
    assert (aerial["identity"], aerial["platform"]) == ("0001", "aerial")
    assert aerial["metadata"]["altitude"] == 30.0 and aerial["metadata"]["split"].endswith("gallery")
    assert client.stats()["tracklets"] == 3

    # Query with a gallery tracklet's own folder: its identity ranks first.
    folder = dataset / "case1_aerial_to_ground" / "gallery" / "0002" / "0002_g1"
    assert main(["query", "--url", url, "--api-key", READ, "--json", "--top-k", "2", str(folder)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["results"][0]["identity"] == "0002" and len(answer["results"]) == 2
    assert main(["query", "--url", url, "--api-key", READ, "--rerank", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "re-ranked" in table and table.splitlines()[2].split()[:2] == ["1", "0002"]

    # --since: only the tracklet enrolled last (case2's) is in range; RFC 3339 text works the same.
    last = max(client.iter_tracklets(), key=lambda t: t["created_at"])
    assert main(["query", "--url", url, "--api-key", READ, "--json", "--since", str(last["created_at"]), str(folder)]) == 0
    assert [t["tracklet_id"] for r in json.loads(capsys.readouterr().out)["results"] for t in r["tracklets"]] == [
        last["tracklet_id"]]
    assert main(["query", "--url", url, "--api-key", READ, "--json", "--until", "1970-01-02T00:00:00Z", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == []
    # The CLI speaks the versioned API only.
    routes = set(re.findall(r'route="([^"]+)"', httpx.get(f"{url}/metrics").text))
    assert "/v1/query" in routes and "/v1/tracklets" in routes and "/query" not in routes and "/tracklets" not in routes


def test_cli_errors(
    dataset: Path, checkpoints: Any, sqlite_url: str, make_settings: Callable[..., Any],
    thread_server: Callable[..., Any], capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    server = thread_server(make_settings(checkpoints.a, sqlite_url))
    assert main(["enroll", "--url", server.url, "--api-key", READ, str(dataset)]) == 1
    assert "403" in capsys.readouterr().err
    assert main(["enroll", "--url", server.url, "--api-key", "wrong", str(dataset)]) == 1
    assert "401" in capsys.readouterr().err
    assert main(["enroll", "--url", server.url, "--api-key", WRITE, str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["enroll", "--url", server.url, "--api-key", WRITE, "--cases", "case9", str(dataset)]) == 2
    assert "unknown case" in capsys.readouterr().err
    assert main(["query", "--url", server.url, "--api-key", READ, str(tmp_path)]) == 2
    assert "no image files" in capsys.readouterr().err
    folder = dataset / "case1_aerial_to_ground" / "gallery" / "0001" / "0001_g1"
    assert main(["query", "--url", "http://127.0.0.1:9", "--api-key", READ, str(folder)]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert server.client().stats()["tracklets"] == 0
