"""The ONNX Runtime backend: same descriptors as torch, batch-independent, and the same answers
from a server running `sasreid serve --backend onnx` on a gallery enrolled with the checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.export import export_onnx
from service.encoders import OnnxEncoder, TorchEncoder, prepare_tracklet


@pytest.fixture(scope="module")
def onnx_model(checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(checkpoints.a, out)
    return out


def _inputs(make_tracklet, seeds, frames, spec):
    batch = []
    for seed, n in zip(seeds, frames):
        images = [Image.open(io.BytesIO(b)) for _, b in make_tracklet(seed, frames=n)]
        batch.append(prepare_tracklet(images, spec))
    return np.stack(batch)


def test_onnx_encoder_matches_torch_encoder(checkpoints, onnx_model, make_tracklet):
    torch_enc = TorchEncoder(checkpoints.a)
    onnx_enc = OnnxEncoder(onnx_model)
    assert onnx_enc.fingerprint == torch_enc.fingerprint == checkpoints.fingerprint_a
    assert onnx_enc.dim == torch_enc.dim
    assert onnx_enc.input_spec == torch_enc.input_spec
    # Lengths 1, 3, 8 and 20 all become the fixed 8 frames; ONNX takes nothing else.
    x = _inputs(make_tracklet, seeds=[1, 2, 3, 4], frames=[1, 3, 8, 20], spec=onnx_enc.input_spec)
    a, b = torch_enc.encode(x), onnx_enc.encode(x)
    np.testing.assert_allclose(a, b, atol=1e-4)
    singles = np.concatenate([onnx_enc.encode(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(b, singles, atol=1e-5)
    with pytest.raises(ValueError, match="T is fixed at export"):
        onnx_enc.encode(x[:, :5])


def test_onnx_encoder_rejects_non_exported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="sasreid export"):
        OnnxEncoder(tmp_path / "missing.onnx")


def test_onnx_server_answers_like_the_torch_server(checkpoints, onnx_model, process_server, tmp_path, make_tracklet):
    store = f"sqlite:///{tmp_path / 'gallery.sqlite'}"
    torch_srv = process_server(["--checkpoint", str(checkpoints.a), "--store", store])
    client = torch_srv.client()
    for i in range(6):
        client.enroll(make_tracklet(100 + i, frames=4), identity=f"id{i % 3}", tracklet_id=f"t{i}")
    query = make_tracklet(102, frames=4)
    expected = client.query(query, top_k=3)
    torch_srv.stop()

    onnx_srv = process_server(["--backend", "onnx", "--model", str(onnx_model), "--store", store])
    client = onnx_srv.client()
    stats = client.stats()
    assert stats["backend"] == "onnx" and stats["tracklets"] == 6
    got = client.query(query, top_k=3)
    assert [r["identity"] for r in got["results"]] == [r["identity"] for r in expected["results"]]
    assert got["results"][0]["tracklets"][0]["tracklet_id"] == "t2"
    np.testing.assert_allclose([r["score"] for r in got["results"]], [r["score"] for r in expected["results"]],
                               atol=1e-4)
    # Enrolling through the ONNX server lands in the same gallery, under the same fingerprint.
    assert client.enroll(make_tracklet(200, frames=3), identity="id9", tracklet_id="t9").created
