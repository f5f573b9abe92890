"""The smplx measurement path with a synthetic SMPL model file, and `sasreid model-info`."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from model.shape import SMPLMeasurer, shape_prior_loss
from service.cli import main

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def synthetic_smpl(path, n_verts=6890):
    """A structurally valid SMPL model file: a vertical column of vertices whose first shape
    direction stretches it, joints regressed from vertex slices. Not a human body - it only has
    the data layout smplx reads (real SMPL files need registration)."""
    rng = np.random.default_rng(0)
    y = np.linspace(0.0, 1.7, n_verts)
    v_template = np.stack([0.2 * np.sin(y * 40), y, 0.1 * np.cos(y * 40)], axis=1)
    shapedirs = np.zeros((n_verts, 3, 10))
    shapedirs[:, 1, 0] = 0.05 * y  # beta_0 scales height
    shapedirs[:, 0, 1] = 0.02 * np.sign(v_template[:, 0])  # beta_1 widens
    J = np.zeros((24, n_verts))
    for j in range(24):
        J[j, (j * n_verts) // 24:((j + 1) * n_verts) // 24] = 1.0
    J /= J.sum(1, keepdims=True)
    weights = np.zeros((n_verts, 24))
    weights[np.arange(n_verts), (np.arange(n_verts) * 24) // n_verts] = 1.0
    kintree = np.array([[2**32 - 1 if p < 0 else p for p in SMPL_PARENTS], list(range(24))], dtype=np.int64)
    data = {
        "v_template": v_template,
        "shapedirs": shapedirs,
        "posedirs": rng.normal(0, 1e-4, (n_verts, 3, 207)),
        "J_regressor": J,
        "weights": weights,
        "kintree_table": kintree,
        "f": np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int64),
    }
    with open(path, "wb") as fh:
        pickle.dump(data, fh)


def test_betas_to_measurements_with_smplx(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    synthetic_smpl(path)
    measurer = SMPLMeasurer(path)
    betas = torch.zeros(3, 10)
    betas[1, 0] = 2.0  # taller
    betas[2, 0] = -2.0  # shorter
    m = measurer.measure(betas)
    assert len(m) == 3
    assert m[2].height < m[0].height < m[1].height
    assert m[0].height == pytest.approx(1.7, rel=1e-3)
    assert all(x.shoulder_width > 0 and x.leg_length > 0 for x in m)


def test_missing_smpl_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="SMPL model file not found"):
        SMPLMeasurer(tmp_path / "SMPL_NEUTRAL.pkl")


def test_shape_prior_is_squared_distance_to_mean_shape():
    betas = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    assert float(shape_prior_loss(betas)) == pytest.approx((1 + 4 + 0) / 2)


def test_model_info_cli_json(capsys):
    assert main(["model-info", "--config", "vit-l-14", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["descriptor_dim"] == 768 + 1024 + 10
    assert info["input_size"] == [252, 126]
    mods = info["modules"]
    assert set(mods) == {"backbone", "mevb_head", "mgtm", "prsd", "heads"}
    assert sum(m["params"] for m in mods.values()) == info["total_params"]
    assert 300e6 < mods["backbone"]["params"] < 310e6  # CLIP ViT-L/14 visual tower
    # ViT-L at 163 tokens: 24 x (12 W^2 N + 2 N^2 W) ~ 50 GMACs per frame; 8 frames, 2 FLOPs per MAC.
    assert 8 * 2 * 45 < info["gflops"] < 8 * 2 * 80


def test_model_info_selective_fine_tuning(capsys):
    assert main(["model-info", "--config", "vit-b-16", "--trainable-blocks", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    bb = info["modules"]["backbone"]
    assert 0 < bb["trainable"] < bb["params"] / 4  # 2 of 12 blocks (+ final norm and projection)
    assert info["modules"]["mgtm"]["trainable"] == info["modules"]["mgtm"]["params"]
