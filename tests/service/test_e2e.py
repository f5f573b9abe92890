"""End to end on both stores: enroll, query, filters, re-ranking, delete, restart in a new process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.client import ApiClientError, SasreidClient

READ_KEY = "test-read-key"

# identity, tracklet id, seed, camera, platform
ENROLLED = [
    ("alice", "alice_1", 1, "cam1", "ground"),
    ("alice", "alice_2", 2, "cam2", "aerial"),
    ("bob", "bob_1", 3, "cam1", "ground"),
    ("carol", "carol_1", 4, "cam2", "aerial"),
    ("dave", "dave_1", 5, "cam3", "aerial"),
]


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, sqlite_url: str) -> tuple[str, str]:
    """(store URL, redis key prefix) of an empty store of each kind."""
    if request.param == "sqlite":
        return sqlite_url, "sasreid:"
    server = request.getfixturevalue("redis_server")
    return server.url, request.getfixturevalue("redis_prefix")


def _ranking(answer: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [(r["identity"], [t["tracklet_id"] for t in r["tracklets"]]) for r in answer["results"]]


def _tracklets(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for r in answer["results"] for t in r["tracklets"]]


def _answers(client: SasreidClient, bob: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The answers compared before and after the restart."""
    return {
        "by_frames": client.query(frames=bob, top_k=10),
        "by_id": client.query(tracklet_id="alice_2", top_k=10),
        "filtered": client.query(frames=bob, top_k=10, platform="aerial"),
        "reranked": client.query(frames=bob, top_k=10, rerank=True),
        "stats": client.stats(),
        "identities": client.list_identities(),
        "bob_1": client.get_tracklet("bob_1"),
    }


def _same_answer(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert _ranking(a) == _ranking(b)
    assert [r["score"] for r in a["results"]] == pytest.approx([r["score"] for r in b["results"]], abs=1e-5)
    assert a["reranked"] == b["reranked"]


def test_end_to_end_and_restart(
    store: tuple[str, str],
    checkpoints: Any,
    make_settings: Callable[..., Any],
    thread_server: Callable[..., Any],
    process_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    index_kind: str,
) -> None:
    url, prefix = store
    server = thread_server(make_settings(checkpoints.a, url, redis_prefix=prefix))
    client = server.client()
    frames = {tid: make_tracklet(seed) for _, tid, seed, _, _ in ENROLLED}

    # ---- enroll ----------------------------------------------------------------------------
    for identity, tid, _, camera, platform in ENROLLED:
        result = client.enroll(
            frames[tid], identity, tracklet_id=tid, camera=camera, platform=platform, metadata={"seed": tid}
        )
        assert result.created
        record = result.record
        assert record["tracklet_id"] == tid and record["identity"] == identity
        assert (record["camera"], record["platform"], record["num_frames"]) == (camera, platform, 2)
        assert record["fingerprint"] == checkpoints.fingerprint_a
        assert record["metadata"] == {"seed": tid}
        assert "descriptor" not in record

    # Same content again: 200 with the stored record. Other content under that id: 409.
    again = client.enroll(
        frames["bob_1"], "bob", tracklet_id="bob_1", camera="cam1", platform="ground", metadata={"seed": "bob_1"}
    )
    assert not again.created
    assert again.record == client.get_tracklet("bob_1")
    with pytest.raises(ApiClientError) as conflict:
        client.enroll(frames["carol_1"], "bob", tracklet_id="bob_1", camera="cam1", platform="ground")
    assert conflict.value.status == 409 and conflict.value.error == "tracklet_conflict"

    # No tracklet id: one is generated.
    generated = client.enroll(make_tracklet(99), "erin", camera="cam9")
    assert generated.created and len(generated.record["tracklet_id"]) == 32

    # ---- query -----------------------------------------------------------------------------
    answer = client.query(frames=frames["bob_1"], top_k=3)
    assert answer["results"][0]["identity"] == "bob"
    assert answer["results"][0]["tracklets"][0]["tracklet_id"] == "bob_1"
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3]
    assert answer["reranked"] is False
    assert set(answer["timings_ms"]) == {"decode", "embed", "search", "rerank", "total"}

    # The same tracklet sent as JPEG frames: still the same person ranks first.
    jpeg = client.query(frames=make_tracklet(3, fmt="JPEG"), top_k=1)
    assert jpeg["results"][0]["identity"] == "bob"

    # Query by an enrolled tracklet: excluded from its own results; its identity still appears
    # through its other tracklet.
    by_id = client.query(tracklet_id="alice_1", top_k=10)
    listed = [t["tracklet_id"] for t in _tracklets(by_id)]
    assert "alice_1" not in listed and "alice_2" in listed
    alice = next(r for r in by_id["results"] if r["identity"] == "alice")
    assert [t["tracklet_id"] for t in alice["tracklets"]] == ["alice_2"]
    assert alice["score"] == pytest.approx(alice["tracklets"][0]["score"])

    # Filters.
    aerial = client.query(frames=frames["bob_1"], top_k=10, platform="aerial")
    assert aerial["results"] and all(t["platform"] == "aerial" for t in _tracklets(aerial))
    assert "bob" not in [r["identity"] for r in aerial["results"]]
    cam2 = client.query(frames=frames["bob_1"], top_k=10, camera="cam2")
    assert {t["tracklet_id"] for t in _tracklets(cam2)} == {"alice_2", "carol_1"}
    other_cams = client.query(frames=frames["bob_1"], top_k=10, query_camera="cam1", exclude_same_camera=True)
    assert other_cams["results"] and all(t["camera"] != "cam1" for t in _tracklets(other_cams))
    # A tracklet_id query takes its camera from the stored tracklet.
    by_id_cam = client.query(tracklet_id="alice_1", top_k=10, exclude_same_camera=True)
    assert all(t["camera"] != "cam1" for t in _tracklets(by_id_cam))
    with pytest.raises(ApiClientError) as no_camera:
        client.query(frames=frames["bob_1"], exclude_same_camera=True)
    assert no_camera.value.status == 422 and no_camera.value.error == "missing_query_camera"

    # Re-ranking.
    reranked = client.query(frames=frames["bob_1"], top_k=10, rerank=True, k1=4, k2=2, **{"lambda": 0.3})
    assert reranked["reranked"] is True
    assert reranked["results"][0]["identity"] == "bob"
    assert {r["identity"] for r in reranked["results"]} == {"alice", "bob", "carol", "dave", "erin"}
    assert reranked["timings_ms"]["rerank"] >= 0.0

    # ---- reads -----------------------------------------------------------------------------
    reader = server.client(key=READ_KEY)
    assert reader.get_tracklet("alice_2")["camera"] == "cam2"
    page1 = reader.list_identities(offset=0, limit=2)
    page2 = reader.list_identities(offset=2, limit=10)
    assert page1["total"] == 5 and page2["total"] == 5
    names = [i["identity"] for i in page1["items"] + page2["items"]]
    assert names == sorted(names) and set(names) == {"alice", "bob", "carol", "dave", "erin"}
    assert {i["identity"]: i["tracklets"] for i in page1["items"]}["alice"] == 2
    assert [t["tracklet_id"] for t in reader.get_identity("alice")["tracklets"]] == ["alice_1", "alice_2"]

    # ---- deletes ---------------------------------------------------------------------------
    assert client.delete_tracklet(generated.record["tracklet_id"])["deleted"] is True
    assert client.delete_identity("dave") == {"identity": "dave", "deleted": ["dave_1"]}
    with pytest.raises(ApiClientError) as gone:
        client.get_tracklet("dave_1")
    assert gone.value.status == 404
    after_delete = client.query(frames=frames["dave_1"], top_k=10)
    assert "dave" not in [r["identity"] for r in after_delete["results"]]
    stats = client.stats()
    assert (stats["tracklets"], stats["identities"], stats["indexed_tracklets"]) == (4, 3, 4)
    assert stats["fingerprint"] == checkpoints.fingerprint_a and stats["dim"] > 0
    assert (stats["backend"], stats["device"], stats["index"]) == ("torch", "cpu", index_kind)

    # ---- metrics and docs need no key --------------------------------------------------------
    metrics = httpx.get(f"{server.url}/metrics").text
    # The client calls the versioned routes.
    assert 'route="/v1/query"' in metrics and 'route="/v1/tracklets"' in metrics
    assert "sasreid_embed_batch_size_count" in metrics
    assert "sasreid_gallery_tracklets 4.0" in metrics
    assert httpx.get(f"{server.url}/docs").status_code == 200
    assert "/v1/tracklets/batch" in httpx.get(f"{server.url}/openapi.json").json()["paths"]

    before = _answers(client, frames["bob_1"])
    server.stop()

    # ---- restart: a new process on the same store answers the same ----------------------------
    restarted = process_server(
        ["--checkpoint", str(checkpoints.a), "--store", url], SASREID_REDIS_PREFIX=prefix
    )
    after = _answers(restarted.client(), frames["bob_1"])
    for key in ("by_frames", "by_id", "filtered", "reranked"):
        _same_answer(before[key], after[key])
    assert before["stats"] == after["stats"]
    assert before["identities"] == after["identities"]
    assert before["bob_1"] == after["bob_1"]
