"""Checkpoint directory format: round trip, fingerprints, clear errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch

from model import CheckpointError, ModelConfig, build_model, load_checkpoint, save_checkpoint
from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture()
def saved(tmp_path):
    cfg = ModelConfig.preset("tiny", num_classes=4)
    model = build_model(cfg)
    # Make the BN running stats and memory non-trivial so the round trip covers buffers too.
    model.train()
    x = torch.randn(4, 8, 3, 64, 32)
    model.compute_losses(model(x), torch.tensor([0, 0, 1, 1]))
    fp = save_checkpoint(model, tmp_path / "ckpt", extra={"epoch": 3})
    return model, tmp_path / "ckpt", fp


def test_round_trip_restores_identical_descriptors(saved):
    model, path, fp = saved
    loaded = load_checkpoint(path)
    x = torch.randn(3, 5, 3, 64, 32)
    assert torch.equal(model.embed(x), loaded.embed(x))
    assert loaded.fingerprint == fp == model.fingerprint
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["descriptor_dim"] == model.descriptor_dim
    assert meta["extra"] == {"epoch": 3}
    assert meta["model"]["num_classes"] == 4
    assert torch.equal(loaded.memory.proxies, model.memory.proxies)


def test_fingerprint_changes_with_weights(saved, tmp_path):
    model, _, fp = saved
    with torch.no_grad():
        model.prsd.regressor[0].weight[0, 0] += 1.0
    assert save_checkpoint(model, tmp_path / "other") != fp


def test_corrupt_weights_fail_clearly(saved):
    _, path, _ = saved
    weights = path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # flip one byte inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"fingerprint .* does not match"):
        load_checkpoint(path)


def test_truncated_weights_fail_clearly(saved):
    _, path, _ = saved
    weights = path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt weights file"):
        load_checkpoint(path)


def test_other_format_version_fails_clearly(saved):
    _, path, _ = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["format_version"] = 99
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"format version 99"):
        load_checkpoint(path)


def test_missing_and_garbage_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt config"):
        load_checkpoint(tmp_path / "garbage")
