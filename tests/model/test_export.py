"""`sasreid export`: ONNX graph of the embedding path, metadata, parity, batch independence."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model import ModelConfig, build_model, save_checkpoint
from model.export import ExportError, export_onnx, read_onnx_metadata
from service.cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(1)
    model = build_model(ModelConfig.preset("tiny"))
    fp = save_checkpoint(model, tmp / "ckpt")
    assert main(["export", "--checkpoint", str(tmp / "ckpt"), "--out", str(tmp / "m.onnx"), "--frames", "6"]) == 0
    return model, fp, tmp


def test_metadata_carries_fingerprint_and_preprocessing(exported):
    model, fp, tmp = exported
    meta = read_onnx_metadata(tmp / "m.onnx")
    assert meta["fingerprint"] == fp
    assert int(meta["descriptor_dim"]) == model.descriptor_dim
    assert int(meta["frames"]) == 6
    assert meta["input_size"] == "[64, 32]"


def test_onnx_matches_torch_and_batch_does_not_matter(exported):
    model, _, tmp = exported
    session = ort.InferenceSession(str(tmp / "m.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 6, 3, 64, 32, generator=g)
    batched = session.run(None, {"frames": x.numpy()})[0]
    singles = np.concatenate([session.run(None, {"frames": x[i:i + 1].numpy()})[0] for i in range(5)])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    np.testing.assert_allclose(batched, model.embed(x).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_parity_failure_removes_the_output(exported, tmp_path):
    _, _, tmp = exported
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(tmp / "ckpt", tmp_path / "bad.onnx", frames=2, tolerance=1e-12)
    assert not (tmp_path / "bad.onnx").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_export_cli_reports_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "checkpoint directory not found" in capsys.readouterr().out


def test_wide_mamba_layer_exports_its_streamed_scan_with_a_dynamic_batch(tmp_path):
    """Layers with >= STREAM_MIN_STATES states per token (vit-b-16, vit-l-14) export the
    chunked streaming scan (two chunks and a partial one here); the graph matches eager torch
    at batch sizes other than the traced one."""
    from model.mamba import STREAM_CHUNK, STREAM_MIN_STATES, Mamba

    torch.manual_seed(2)
    m = Mamba(512, d_state=8).eval()
    assert m.d_inner * m.d_state >= STREAM_MIN_STATES
    length = 2 * STREAM_CHUNK + 5
    with torch.no_grad():
        torch.onnx.export(m, (torch.randn(2, length, 512),), str(tmp_path / "mamba.onnx"), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "mamba.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, length, 512)
        with torch.no_grad():
            expected = m(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5, rtol=1e-4)
