"""The vector-index registry and interface: one list of kinds, engine types kept out of signatures."""

from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest

from index.gallery import Gallery
from index.types import GalleryEntry, IndexOptions
from index.vector_index import INDEX_KINDS, SnapshotIndex, VectorIndex, index_kinds, make_index
from service.core.config import Settings


def test_registry_lists_every_kind_once_and_names_them_in_errors() -> None:
    kinds = index_kinds()
    assert kinds[0] == "flat" and {"flat", "ivf", "hnsw"} <= set(kinds)
    assert all(INDEX_KINDS[k].kind == k and issubclass(INDEX_KINDS[k], VectorIndex) for k in kinds)
    with pytest.raises(ValueError, match=r"unknown index kind 'annoy'; valid kinds: flat, hnsw, ivf, milvus"):
        make_index("annoy", 8)
    with pytest.raises(ValueError, match="valid kinds: flat"):
        Gallery(8, kind="annoy")
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        Settings(_env_prefix="SASREID_TEST_UNUSED_", index="annoy")
    for kind in kinds:
        extra = {"milvus_uri": "gallery.db"} if kind == "milvus" else {}
        assert Settings(_env_prefix="SASREID_TEST_UNUSED_", index=kind, **extra).index == kind


@pytest.mark.parametrize("cls", [VectorIndex, SnapshotIndex])
def test_interface_signatures_use_no_engine_types(cls: type) -> None:
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("__") and name != "__init__":
            continue
        hints = typing.get_type_hints(member)
        for hint in hints.values():
            assert "faiss" not in repr(hint).lower() and "milvus" not in repr(hint).lower(), (name, hint)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_faiss_kind_round_trips_through_its_bytes(kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    entries = [GalleryEntry(int_id=10 + i, tracklet_id=f"t{i}", identity=f"p{i % 5}") for i in range(50)]
    options = IndexOptions(nlist=2, train_size=20)
    index = make_index(kind, 8, options, use_gpu=False)
    index.add(entries, x)
    index.remove(np.array([10, 11], dtype=np.int64))
    assert isinstance(index, SnapshotIndex) and len(index) == 48
    data, trained = index.export()
    assert isinstance(data, bytes) and trained
    back = type(index).restore(8, options, data, trained, use_gpu=False)
    assert sorted(back.ids().tolist()) == list(range(12, 60))
    np.testing.assert_array_equal(back.vectors(np.array([12, 59])), x[[2, 49]])
    assert back.search(x[5:6], 1).tolist() == [15]
    with pytest.raises(ValueError, match=r"not a FAISS index|expected"):
        type(index).restore(8, options, b"not an index", trained, use_gpu=False)


def test_milvus_settings_need_a_uri_and_refuse_snapshots(tmp_path) -> None:
    with pytest.raises(ValueError, match="index milvus needs milvus_uri"):
        Settings(_env_prefix="SASREID_TEST_UNUSED_", index="milvus")
    with pytest.raises(ValueError, match="snapshot_dir is for the FAISS index kinds"):
        Settings(_env_prefix="SASREID_TEST_UNUSED_", index="milvus", milvus_uri="x.db", snapshot_dir=tmp_path)
    assert Settings(_env_prefix="SASREID_TEST_UNUSED_", index="milvus", milvus_uri="x.db").milvus_uri == "x.db"
