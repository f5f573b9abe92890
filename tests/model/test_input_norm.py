"""``input_norm = "frame"``: each frame standardised inside the model, so a camera's colour cast
(a per-channel gain and offset) does not move the descriptor, on every path that serves it."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model import ModelConfig, build_model, load_checkpoint, save_checkpoint
from model.engine.config import TrainConfig
from model.engine.train_cli import add_arguments, requested_fields
from model.export import export_onnx
from model.sasreid import standardise_frames

torch.set_num_threads(2)

GAIN = torch.tensor([1.8, 0.6, 1.2]).view(3, 1, 1)
OFFSET = torch.tensor([0.4, -0.5, 0.1]).view(3, 1, 1)


def frames(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 4, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def tiny_model(input_norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(dataclasses.replace(ModelConfig.preset("tiny"), input_norm=input_norm)).eval()


def test_standardise_frames_gives_zero_mean_unit_variance_per_frame_and_channel():
    out = standardise_frames(frames())
    assert out.shape == frames().shape
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(3, 4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=(-2, -1), unbiased=False), torch.ones(3, 4, 3), atol=2e-3, rtol=0)


def test_a_uniform_frame_is_not_amplified():
    flat = torch.full((1, 3, 8, 4), 0.7) + 1e-4 * torch.randn(1, 3, 8, 4)
    assert float(standardise_frames(flat).abs().max()) < 0.05


def test_frame_norm_makes_the_descriptor_blind_to_a_colour_cast():
    x = frames()
    cast = GAIN * x + OFFSET
    frame_model = tiny_model("frame")
    cos = (frame_model.embed(x) * frame_model.embed(cast)).sum(dim=1)
    assert float(cos.min()) > 0.999
    dataset_model = tiny_model("dataset")
    cos_plain = (dataset_model.embed(x) * dataset_model.embed(cast)).sum(dim=1)
    assert float(cos_plain.min()) < 0.99  # without it the same cast does move the descriptor


def test_input_norm_is_kept_by_the_checkpoint_and_old_configs_load_as_dataset(tmp_path):
    model = tiny_model("frame")
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg.input_norm == "frame"
    torch.testing.assert_close(loaded.embed(frames(1)), model.embed(frames(1)))
    old = ModelConfig.preset("tiny").to_dict()
    del old["input_norm"]  # a checkpoint written before the field existed
    assert ModelConfig.from_dict(old).input_norm == "dataset"


def test_onnx_export_standardises_frames_like_torch(tmp_path):
    model = tiny_model("frame")
    save_checkpoint(model, tmp_path / "ckpt")
    export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx", frames=4)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = frames(2)
    onnx_plain = session.run(None, {"frames": x.numpy()})[0]
    onnx_cast = session.run(None, {"frames": (GAIN * x + OFFSET).numpy()})[0]
    np.testing.assert_allclose(onnx_plain, model.embed(x).numpy(), atol=1e-4)
    assert float((onnx_plain * onnx_cast).sum(axis=1).min()) > 0.999


@pytest.mark.parametrize(("argv", "expected"), [([], "dataset"), (["--input-norm", "frame"], "frame")])
def test_train_flag_reaches_the_model_config(argv, expected):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "o", "--config", "tiny", *argv])
    cfg = TrainConfig.recipe("tiny", **requested_fields(args))
    assert cfg.model_config(num_classes=4).input_norm == expected
