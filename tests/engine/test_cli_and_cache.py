"""``sasreid train`` / ``sasreid evaluate`` through ``service.cli.main``, the descriptor cache and
error messages for bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from model.engine.evaluate import evaluate_checkpoint
from service.cli import main

TRAIN_FAST = ["--p", "2", "--k", "2", "--frames", "4", "--eval-frames", "4",
              "--num-workers", "2", "--no-progress"]


def test_cli_train_then_evaluate_uses_training_cache(easy_root: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    shutil.copytree(easy_root, root)
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--config", "tiny", "--out", str(run), "--epochs", "1",
                 *TRAIN_FAST]) == 0
    out = capsys.readouterr().out
    assert "served checkpoint" in out and "mAP-3 (query-weighted (pooled) mean)" in out
    sub, js, png = tmp_path / "sub.csv", tmp_path / "report.json", tmp_path / "cmc.png"
    rc = main(["evaluate", "--data", str(root), "--checkpoint", str(run / "final"), "--rerank", "--json", str(js),
               "--submission", str(sub), "--plot", str(png), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    # The final evaluation of training filled the run's cache (RUN_DIR/descriptor-cache), which
    # evaluate uses by default for a checkpoint of that run: nothing re-embedded, nothing in the data.
    assert "embedded 0, from cache 27" in out
    assert len(list((run / "descriptor-cache").glob("*.npz"))) == 1
    assert not list(root.rglob("*.npz"))
    assert out.count("A->G  ") == 2  # one row without and one with re-ranking
    report = json.loads(js.read_text())
    assert [c["label"] for c in report["cases"]] == ["A->G", "G->A", "A->A"]
    assert all("reranked" in c for c in report["cases"])
    assert set(report["mAP-3"]) == {"unweighted mean of case mAPs", "query-weighted (pooled) mean"}
    with sub.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["row_id", "case", "query_tracklet", "ranked_gallery_tracklets"]
    assert len(rows) == 1 + 9 and {r[1] for r in rows[1:]} == {
        "Case 1: Aerial to Ground", "Case 2: Ground to Aerial", "Case 3: Aerial to Aerial"}
    assert all(len(r[3].split(" ")) == 6 for r in rows[1:])
    with Image.open(png) as im:
        assert im.format == "PNG"
    # Camera-wise centring re-ranks the cached descriptors: nothing embedded again, and said so.
    js2 = tmp_path / "centred.json"
    assert main(["evaluate", "--data", str(root), "--checkpoint", str(run / "final"), "--camera-centring",
                 "--json", str(js2), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "embedded 0, from cache 27" in out and "camera-wise centring" in out
    assert json.loads(js2.read_text())["camera_centring"] is True and report["camera_centring"] is False


def test_descriptor_cache_hit_and_invalidation(easy_root: Path, tmp_path: Path, make_tiny_checkpoint):
    cache = tmp_path / "cache"
    ckpt_a = make_tiny_checkpoint(tmp_path / "a", seed=1)
    ckpt_b = make_tiny_checkpoint(tmp_path / "b", seed=2)
    kw = dict(frames=4, cache_dir=cache, progress=False)
    first = evaluate_checkpoint(easy_root, ckpt_a, **kw)
    assert first.meta["embedded_tracklets"] == 27 and first.meta["cached_tracklets"] == 0
    cache_file = Path(first.meta["cache"])
    mtime = cache_file.stat().st_mtime_ns
    second = evaluate_checkpoint(easy_root, ckpt_a, rerank=True, **kw)
    assert second.meta["embedded_tracklets"] == 0 and second.meta["cached_tracklets"] == 27
    assert cache_file.stat().st_mtime_ns == mtime  # nothing rewritten
    assert second.metrics()["A->G/mAP"] == first.metrics()["A->G/mAP"]
    # Another checkpoint (another fingerprint) or other sampling settings miss the cache.
    other = evaluate_checkpoint(easy_root, ckpt_b, **kw)
    assert other.meta["embedded_tracklets"] == 27 and other.meta["cache"] != first.meta["cache"]
    more_frames = evaluate_checkpoint(easy_root, ckpt_a, **{**kw, "frames": 5})
    assert more_frames.meta["embedded_tracklets"] == 27
    uncached = evaluate_checkpoint(easy_root, ckpt_a, frames=4, use_cache=False, progress=False)
    assert uncached.meta["embedded_tracklets"] == 27 and uncached.meta["cache"] is None
    assert uncached.metrics()["A->A/mAP"] == pytest.approx(first.metrics()["A->A/mAP"], abs=1e-4)


def test_bad_paths_give_clear_errors(easy_root: Path, tmp_path: Path, capsys, make_tiny_checkpoint):
    missing = tmp_path / "no_such_dataset"
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    assert main(["evaluate", "--data", str(missing), "--checkpoint", str(ckpt), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert main(["train", "--data", str(missing), "--config", "tiny", "--out", str(tmp_path / "r")]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty_root"
    empty.mkdir()
    assert main(["evaluate", "--data", str(empty), "--checkpoint", str(ckpt)]) == 2
    assert str(empty) in capsys.readouterr().err
    no_ckpt = tmp_path / "no_checkpoint"
    assert main(["evaluate", "--data", str(easy_root), "--checkpoint", str(no_ckpt), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert str(no_ckpt) in err and "checkpoint directory not found" in err
