"""Training runs on tiny real datasets: checkpoints, log, learning, exact resume, run-folder rules."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model import load_checkpoint
from model.checkpoint import read_checkpoint_config
from model.engine.config import TrainConfig
from model.engine.runlog import read_log
from model.engine.state import STATE_FILE
from model.engine.trainer import Trainer, TrainingError


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(p=2, k=2, seq_len=4, num_workers=0, eval_frames=4, progress=False, log_every=1)
    return TrainConfig.recipe("tiny", **{**base, **kw})


def test_short_run_learns_and_writes_checkpoints(easy_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = Trainer(tiny_cfg(epochs=4, ckpt_every=2, keep_states=1), easy_root, run).fit()
    # Checkpoints every 2 epochs; only the newest keeps its optimizer state.
    for epoch in (2, 4):
        model = load_checkpoint(run / "checkpoints" / f"epoch_{epoch:03d}")
        assert model.descriptor_dim > 0
    assert not (run / "checkpoints" / "epoch_002" / STATE_FILE).exists()
    assert (run / "checkpoints" / "epoch_004" / STATE_FILE).exists()
    final = load_checkpoint(run / "final")
    assert final.cfg.num_classes == 4
    extra = read_checkpoint_config(run / "final")["extra"]
    assert extra["epoch"] == 4 and extra["train_config"]["epochs"] == 4
    assert extra["dataset"] == str(easy_root.resolve())

    log = read_log(run / "log.jsonl")
    events = [r["event"] for r in log]
    assert events[0] == "start" and events[-1] == "end" and "eval" in events
    steps = [r for r in log if r["event"] == "step"]
    epochs = [r for r in log if r["event"] == "epoch"]
    assert len(steps) == sum(r["iters"] for r in epochs) >= 16  # log_every=1: every iteration
    assert all(math.isfinite(v) for r in steps for v in r["loss"].values())
    assert set(steps[0]["loss"]) == {"triplet", "id", "memory", "shape_prior", "total"}
    # The shape prior starts near the mean shape and does not swamp the first steps.
    assert steps[0]["loss"]["shape_prior"] < 2.0
    start = log[0]
    assert start["train"] == {"identities": 4, "tracklets": 16, "frames": sum(
        len(list(t.iterdir())) for p in (easy_root / "train").iterdir() for t in p.iterdir()),
        "single_frame_tracklets": 0, "single_frame_share": 0.0}
    assert set(start["cases"]) == {"A->G", "G->A", "A->A"}
    # Warm-up: the lr rises over the first iterations.
    assert steps[0]["lr"]["new"] < steps[5]["lr"]["new"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    totals = [r["loss"]["total"] for r in epochs]
    assert totals[-1] < totals[0]
    triplet = [r["loss"]["triplet"] for r in epochs]
    assert triplet[-1] < triplet[0]
    # The final evaluation covers the three cases.
    assert result.report is not None and [c.label for c in result.report.cases] == ["A->G", "G->A", "A->A"]
    assert (run / "eval_final.json").is_file()


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def test_resume_reproduces_straight_training(make_easy_dataset, tmp_path: Path):
    root = make_easy_dataset(tmp_path / "data", train_ids=4, test_ids=0, train_tracklets=2, frames=5)
    cfg = tiny_cfg(epochs=2, ckpt_every=1)
    # Two loader workers for the straight run, none for the split one: batches, frames and
    # augmentation depend only on (seed, epoch, index), not on which process loads them.
    Trainer(cfg.replace(num_workers=2), root, tmp_path / "straight").fit()
    Trainer(cfg.replace(epochs=1), root, tmp_path / "split").fit()
    Trainer(cfg, root, tmp_path / "split", resume=True).fit()
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    # The memory proxies (buffers) are part of the resumed state too.
    assert any("memory" in k for k in a)
    log = read_log(tmp_path / "split" / "log.jsonl")
    assert [r["from_epoch"] for r in log if r["event"] == "resume"] == [1]


def test_run_folder_rules(make_easy_dataset, tmp_path: Path):
    root = make_easy_dataset(tmp_path / "data", train_ids=2, test_ids=0, train_tracklets=2, frames=3)
    cfg = tiny_cfg(epochs=0)
    Trainer(cfg, root, tmp_path / "run").fit()  # epochs=0: the initial weights become final/
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    with pytest.raises(TrainingError, match="already holds a run"):
        Trainer(cfg, root, tmp_path / "run").fit()
    with pytest.raises(TrainingError, match="no run to resume"):
        Trainer(cfg, root, tmp_path / "empty", resume=True).fit()


def test_outfit_identities_train_one_class_per_person_and_session(tmp_path: Path) -> None:
    """``train_identity="outfit"``: each (person, session) of the training split is its own class
    (short-term, same-outfit re-identification); the default keeps one class per person."""
    from model.data import load_detreidx
    from model.data.synth.generate import generate_synth
    from model.data.synth.plan import SynthConfig
    from model.engine.datasets import outfit_classes

    root = tmp_path / "synth"
    generate_synth(SynthConfig(ids=6, test_ids=3, tracklets_per_id=4, frames=3, min_frames=2,
                               distractor_fraction=0.34, seed=3), root, workers=1, progress=False)
    train = load_detreidx(root).train
    persons = {t.pid for t in train}
    outfits = {(t.pid, t.session) for t in train}
    assert len(persons) == 3 and len(outfits) == 6  # two sessions (outfits) per training person
    relabelled, classes = outfit_classes(train)
    assert classes == 6 and sorted({t.pid for t in relabelled}) == list(range(6))
    by_outfit: dict[tuple[int, object], set[int]] = {}
    for before, after in zip(train, relabelled, strict=True):
        by_outfit.setdefault((before.pid, before.session), set()).add(after.pid)
        assert after.tracklet_id == before.tracklet_id and after.session == before.session
    assert all(len(labels) == 1 for labels in by_outfit.values())  # one class per outfit, none shared
    assert len({next(iter(v)) for v in by_outfit.values()}) == 6
    no_sessions = [dataclasses.replace(t, session=None) for t in train]
    assert outfit_classes(no_sessions)[1] == 3  # without sessions: one class per person

    run = tmp_path / "run"
    Trainer(tiny_cfg(epochs=1, train_identity="outfit"), root, run).fit()
    assert load_checkpoint(run / "final").cfg.num_classes == 6
    assert read_checkpoint_config(run / "final")["extra"]["train_config"]["train_identity"] == "outfit"
    start = read_log(run / "log.jsonl")[0]
    assert start["train"]["identities"] == 3  # the summary still counts people
    with pytest.raises(ValueError, match="train_identity"):
        tiny_cfg(train_identity="session").validate()
