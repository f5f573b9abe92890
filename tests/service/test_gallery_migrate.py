"""``sasreid gallery migrate``: a gallery served with FAISS is copied into Milvus (real milvus-lite),
resumably and idempotently, verified by counts, id digest and vectors; a server then started with
``--index milvus`` on it has nothing to reconcile and answers as the FAISS one did."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.gallery import Gallery
from index.store import open_store
from index.types import IndexOptions
from tests.conftest import free_port

pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install '.[milvus]')")

from index.milvus_index import MilvusIndex, collection_name

REPO = Path(__file__).resolve().parents[2]


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "gallery", "migrate", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def answers(client: Any) -> list[Any]:
    out = client.query(tracklet_id="alice_1", top_k=10)["results"]
    return [(r["identity"], [(t["tracklet_id"], round(t["score"], 5)) for t in r["tracklets"]]) for r in out]


def test_migrate_a_faiss_gallery_into_milvus(
    tmp_path: Path,
    sqlite_url: str,
    checkpoints: Any,
    make_settings: Callable[..., Any],
    thread_server: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    faiss = thread_server(make_settings(checkpoints.a, sqlite_url, index="flat", milvus_uri=None))
    for identity, tid, seed in (("alice", "alice_1", 1), ("alice", "alice_2", 2), ("bob", "bob_1", 3),
                                ("carol", "carol_1", 4), ("dave", "dave_1", 5)):  # fmt: skip
        assert faiss.client().enroll(make_tracklet(seed), identity, tracklet_id=tid).created
    uri = str(tmp_path / "target.db")

    first = migrate("--store", sqlite_url, "--to-milvus", uri, "--batch", "2")
    assert first.returncode == 0, first.stderr
    assert "5 tracklets of checkpoint" in first.stdout and "5 to upsert" in first.stdout
    assert "done: 5 upserted, 0 removed" in first.stdout and "5 sampled vectors are identical" in first.stdout

    again = migrate("--store", sqlite_url, "--to-milvus", uri)  # idempotent: nothing left to write
    assert again.returncode == 0, again.stderr
    assert "0 to upsert" in again.stdout and "done: 0 upserted, 0 removed" in again.stdout

    assert faiss.client().delete_tracklet("dave_1")  # written meanwhile: the next run follows
    expected = answers(faiss.client())
    faiss.stop()
    after_delete = migrate("--store", sqlite_url, "--to-milvus", uri)
    assert after_delete.returncode == 0, after_delete.stderr
    assert "done: 0 upserted, 1 removed" in after_delete.stdout

    # The collection is the one a server opens for this checkpoint: nothing left to reconcile ...
    with open_store(sqlite_url) as store:
        gallery = Gallery(store.info().dim or 0, kind="milvus", graph_k=None,
                          index_params={"uri": uri, "collection": collection_name(checkpoints.fingerprint_a)})  # fmt: skip
        assert gallery.reconcile(store) == (0, 0)
        assert len(gallery) == 4
        gallery.close()
    # ... and served with --index milvus it answers exactly as FAISS did.
    milvus = thread_server(make_settings(checkpoints.a, sqlite_url, index="milvus", milvus_uri=uri))
    assert milvus.client().stats()["indexed_tracklets"] == 4
    assert answers(milvus.client()) == expected
    milvus.stop()


def test_migrate_finds_wrong_vectors_and_rewrite_fixes_them(tmp_path: Path) -> None:
    from tests.index.test_store import make_record

    url = f"sqlite:///{tmp_path / 'g.db'}"
    uri = str(tmp_path / "m.db")
    with open_store(url) as store:
        stored = [r.record for r in store.put_many([make_record(f"t{i}", f"p{i % 3}") for i in range(12)])]
    assert migrate("--store", url, "--to-milvus", uri).returncode == 0
    # A stale copy: one id holds another vector in the collection (another store, same checkpoint).
    index = MilvusIndex(8, IndexOptions(), uri=uri, collection=collection_name("fp-a"))
    from index.types import GalleryEntry

    wrong = stored[3]
    index.add([GalleryEntry.from_record(wrong)], -np.asarray(wrong.descriptor, dtype=np.float32)[None, :])
    index.close()
    found = migrate("--store", url, "--to-milvus", uri, "--verify-vectors", "12")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "1 of 12 sampled vectors differ" in found.stderr and f"int ids [{wrong.int_id}]" in found.stderr
    fixed = migrate("--store", url, "--to-milvus", uri, "--rewrite", "--verify-vectors", "12")
    assert fixed.returncode == 0, fixed.stderr
    assert "done: 12 upserted, 0 removed" in fixed.stdout


def test_migrate_bad_input(tmp_path: Path) -> None:
    from tests.index.test_store import make_record

    url = f"sqlite:///{tmp_path / 'g.db'}"
    empty = migrate("--store", url, "--to-milvus", str(tmp_path / "m.db"))
    assert empty.returncode == 0 and "holds no tracklets: nothing to migrate" in empty.stdout
    with open_store(url) as store:
        store.put(make_record("t0"))  # 8-d descriptors
    MilvusIndex(16, IndexOptions(), uri=str(tmp_path / "m.db"), collection=collection_name("fp-a")).close()
    cases = [
        (["--store", f"redis://127.0.0.1:{free_port()}/0", "--to-milvus", "x.db"], "cannot open the store"),
        (["--store", "mysql://db", "--to-milvus", "x.db"], "unknown store url"),
        (["--store", url, "--to-milvus", " "], "--to-milvus is empty"),
        (["--store", url, "--to-milvus", "x.db", "--batch", "0"], "--batch must be >= 1"),
        (["--store", url, "--to-milvus", str(tmp_path / "m.db")], "holds 16-d vectors, expected 8-d"),
        (["--store", url, "--to-milvus", str(tmp_path / "m.db"), "--collection", "bad name"], "invalid Milvus collection name"),
    ]
    for args, message in cases:
        result = migrate(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
