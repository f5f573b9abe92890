"""TrainConfig recipes, the learning-rate schedule, optimizer groups and resume rules."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pytest
import torch

from model import build_model
from model.engine.config import TrainConfig, backbone_lr, resume_conflicts
from model.engine.schedule import WarmupStepSchedule, lr_factor
from model.engine.train_cli import add_arguments, resolve_config
from model.engine.trainer import build_optimizer


def test_paper_recipe_defaults():
    cfg = TrainConfig.recipe("vit-l-14")
    assert (cfg.epochs, cfg.p, cfg.k, cfg.seq_len) == (40, 4, 4, 8)
    assert (cfg.lr_new, cfg.lr_pretrained, cfg.warmup_start_lr, cfg.warmup_iters) == (3.5e-4, 5e-6, 3.5e-5, 10)
    assert cfg.milestones == (10, 20, 30) and cfg.gamma == 0.1
    assert (cfg.flip_p, cfg.erase_p, cfg.hue_p, cfg.hue_max) == (0.5, 0.5, 0.5, 0.3)
    m = cfg.model_config(num_classes=7)
    assert m.num_classes == 7 and m.mgtm.enabled and m.prsd.enabled and m.mevb.memory
    assert (m.mevb.momentum, m.mevb.temperature, m.mevb.memory_input) == (0.2, 0.05, "bnneck")
    paper = TrainConfig.recipe("vit-l-14-paper").model_config(num_classes=7)
    assert (paper.mevb.momentum, paper.mevb.temperature, paper.mevb.memory_input) == (0.2, 1.0, "raw")
    assert paper.branch_grad == "full" and not paper.descriptor.branch_norm and paper.mgtm.block == "plain"


def test_ablation_switches_reach_the_model_config():
    m = TrainConfig.recipe("tiny", mgtm=False, prsd=False, memory=False, temporal_pool="attention",
                           trainable_blocks=1, memory_temperature=0.5, memory_input="raw", branch_grad="scale",
                           branch_grad_scale=0.3, descriptor_weights=(1.0, 0.5, 0.0)).model_config(3)
    assert not m.mgtm.enabled and not m.prsd.enabled and not m.mevb.memory
    assert m.mevb.memory_input == "raw" and (m.branch_grad, m.branch_grad_scale) == ("scale", 0.3)
    assert (m.descriptor.v_weight, m.descriptor.h_weight, m.descriptor.s_weight) == (1.0, 0.5, 0.0)
    assert m.mevb.temperature == 0.5 and m.mevb.temporal_pool == "attention" and m.backbone.trainable_blocks == 1
    with pytest.raises(ValueError, match="unknown training config"):
        TrainConfig.recipe("tiny", lr=1.0)
    with pytest.raises(ValueError, match="K \\(tracklets per identity\\)"):
        TrainConfig.recipe("tiny", k=1)


def test_schedule_warmup_and_steps():
    kw = dict(warmup_iters=10, warmup_start=0.1, milestones=(10, 20, 30), gamma=0.1)
    assert lr_factor(0, 0, **kw) == pytest.approx(0.1)  # 3.5e-5 / 3.5e-4
    assert lr_factor(5, 0, **kw) == pytest.approx(0.55)
    assert lr_factor(10, 0, **kw) == 1.0
    assert lr_factor(500, 9, **kw) == 1.0
    assert lr_factor(500, 10, **kw) == pytest.approx(0.1)
    assert lr_factor(900, 30, **kw) == pytest.approx(1e-3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [p], "lr": 5e-6}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 3.5e-4}])
    sched = WarmupStepSchedule(opt, **kw)
    assert sched.set(0, 0) == pytest.approx([5e-7, 3.5e-5])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-7, 3.5e-5])


def test_cosine_schedule_decays_to_zero_after_warmup():
    kw = dict(warmup_iters=10, warmup_start=0.1, milestones=(3,), gamma=0.1, total_iters=110)
    assert lr_factor(0, 0, **kw) == pytest.approx(0.1)
    assert lr_factor(10, 0, **kw) == pytest.approx(1.0)
    assert lr_factor(60, 5, **kw) == pytest.approx(0.5)  # half-way: milestones play no part
    assert lr_factor(110, 9, **kw) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(i, 0, **kw) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    saved = TrainConfig.recipe("tiny", schedule="cosine")
    assert resume_conflicts(saved, {"epochs": saved.epochs + 1})  # epochs set the decay
    assert not resume_conflicts(TrainConfig.recipe("tiny"), {"epochs": 99})


def test_optimizer_groups_and_backbone_lr_rule():
    model = build_model(TrainConfig.recipe("vit-l-14").model_config(10), device="meta")
    cfg = TrainConfig.recipe("vit-l-14")
    opt, names = build_optimizer(model, cfg, pretrained=True)
    assert names == ["pretrained", "pretrained/no_decay", "new", "new/no_decay"]
    assert [g["lr"] for g in opt.param_groups] == [5e-6, 5e-6, 3.5e-4, 3.5e-4]
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0, cfg.weight_decay, 0.0]
    # Without pretrained weights the backbone is random and trains at the new-module rate.
    assert backbone_lr(cfg, pretrained=False) == 3.5e-4
    opt, _ = build_optimizer(model, cfg, pretrained=False)
    assert [g["lr"] for g in opt.param_groups] == [3.5e-4] * 4


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_options_and_resume_rules(tmp_path: Path):
    args = parse(["--data", "d", "--config", "tiny", "--out", str(tmp_path), "--no-mgtm", "--lr", "0.002",
                  "--milestones", "3,5", "--frames", "6"])
    cfg = resolve_config(args)
    assert not cfg.mgtm and cfg.lr_new == 0.002 and cfg.milestones == (3, 5) and cfg.seq_len == 6
    assert cfg.prsd and cfg.memory  # not given: recipe defaults
    cfg.save(tmp_path / "train_config.json")
    # On --resume the saved config wins; --epochs may change, the computation may not.
    resumed = resolve_config(parse(["--data", "d", "--config", "tiny", "--out", str(tmp_path), "--resume",
                                    "--epochs", "30"]))
    assert resumed.epochs == 30 and not resumed.mgtm and resumed.lr_new == 0.002
    with pytest.raises(ValueError, match="lr_new"):
        resolve_config(parse(["--data", "d", "--config", "tiny", "--out", str(tmp_path), "--resume", "--lr", "0.1"]))
    with pytest.raises(ValueError, match="trained with --config tiny"):
        resolve_config(parse(["--data", "d", "--config", "vit-b-16", "--out", str(tmp_path), "--resume"]))
    assert resume_conflicts(cfg, {"epochs": 99, "device": "cuda"}) == []
