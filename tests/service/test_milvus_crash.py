"""--index milvus: a kill -9 between the store write and the Milvus write loses no acknowledged
tracklet, and a delete the store acknowledged stays deleted (real processes, real milvus-lite)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from index.store import open_store

pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install '.[milvus]')")

REPO = Path(__file__).resolve().parents[2]

# Writes in the server's order (store, then index) and dies by SIGKILL between the two writes.
_CRASH_BETWEEN_WRITES = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from dataclasses import replace
    from index.gallery import Gallery
    from index.milvus_index import collection_name
    from index.store import open_store

    store_url, uri, action = sys.argv[1:4]
    store = open_store(store_url)
    template = store.get("alice_1")
    gallery = Gallery(template.dim, kind="milvus", graph_k=None,
                      index_params={"uri": uri, "collection": collection_name(template.fingerprint)})
    if action == "put":
        rng = np.random.default_rng(7)
        d = template.descriptor + 0.05 * rng.normal(size=template.dim).astype(np.float32)
        late = replace(template, tracklet_id="late_1", identity="late", content_hash="late",
                       descriptor=(d / np.linalg.norm(d)).astype(np.float32), int_id=None)
        store.put(late)  # acknowledged by the store ...
    else:
        assert store.delete("bob_1")  # ... or deleted there ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before Milvus hears of it
    """
)


def _crash(store_url: str, uri: str, action: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_BETWEEN_WRITES, store_url, uri, action],
        cwd=REPO, capture_output=True, timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode(errors="replace")[-3000:]


def test_kill_9_between_store_and_milvus_writes_loses_nothing(
    tmp_path: Path,
    sqlite_url: str,
    checkpoints: Any,
    process_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    uri = str(tmp_path / "crash-milvus.db")
    args = ["--checkpoint", str(checkpoints.a), "--store", sqlite_url, "--index", "milvus", "--milvus-uri", uri]
    first = process_server(args)
    client = first.client()
    for identity, tid, seed in (("alice", "alice_1", 1), ("bob", "bob_1", 3), ("carol", "carol_1", 4)):
        assert client.enroll(make_tracklet(seed), identity, tracklet_id=tid).created
    first.kill()  # kill -9 of the server as well: nothing is flushed or closed

    _crash(sqlite_url, uri, "put")
    _crash(sqlite_url, uri, "delete")
    with open_store(sqlite_url) as store:
        assert {r.tracklet_id for r in store.iter_records()} == {"alice_1", "carol_1", "late_1"}

    restarted = process_server(args)
    client = restarted.client()
    stats = client.stats()
    assert (stats["tracklets"], stats["indexed_tracklets"], stats["index"]) == (3, 3, "milvus")
    answer = client.query(tracklet_id="alice_1", top_k=10)
    listed = {t["tracklet_id"] for r in answer["results"] for t in r["tracklets"]}
    assert listed == {"late_1", "carol_1"}  # the acknowledged one is searchable, the deleted one gone
    assert answer["results"][0]["identity"] == "late"  # and it is found by its vector, nearest first
    restarted.stop()

    # A clean restart reconciles nothing more and answers the same.
    again = process_server(args)
    assert again.client().query(tracklet_id="alice_1", top_k=10)["results"] == answer["results"]
