"""Distributed training on the CPU: two gloo processes against one process on the same global batches,
``torchrun ... --no-python sasreid train``, and resume under two processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from model.engine.config import TrainConfig
from model.engine.datasets import load_reid_data
from model.engine.runlog import read_log
from model.engine.schedule import WarmupStepSchedule
from model.engine.train_loader import build_train_loader
from model.engine.trainer import Trainer, TrainingError, build_optimizer, seed_everything
from model.sasreid import build_model

WORLD = 2
BIN = Path(sys.executable).parent


def _cfg(**kw) -> TrainConfig:
    # PRSD off: its Transformer's dropout draws from each process's own RNG, which one process
    # cannot reproduce; everything else in a step is deterministic. SGD: Adam's update is
    # lr * sign(g) for parameters whose exact gradient is 0 (a bias before BatchNorm), so float
    # round-off in such a gradient moves them by a full step; SGD keeps round-off at its own size.
    # K = 3: with K = 2 both samples are equally far from their mean, so which becomes the hard
    # proxy is decided by round-off.
    base = dict(optimizer="sgd", lr_new=0.05, p=2, k=3, seq_len=4, num_workers=0, eval_frames=4, progress=False, log_every=1, prsd=False,
                epochs=2, ckpt_every=1)
    return TrainConfig.recipe("tiny", **{**base, **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, cfg: TrainConfig, root: str, run: str, out: str, resume: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    trainer = Trainer(cfg, root, run, resume=resume)
    trainer.fit()
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")


def _refusal_main(rank: int, port: int, cfg: TrainConfig, root: str, run: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    try:
        Trainer(cfg, root, run)
    except TrainingError as exc:
        (Path(out) / f"rank{rank}.txt").write_text(str(exc))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(cfg: TrainConfig, root: Path, run: Path, out: Path, resume: bool = False) -> list[dict[str, torch.Tensor]]:
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank_main, args=(_free_port(), cfg, str(root), str(run), str(out), resume), nprocs=WORLD,
                       start_method="spawn", join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _one_process_reference(cfg: TrainConfig, root: Path) -> dict[str, torch.Tensor]:
    """The same global batches in one process: each rank's shard forwarded on its own (its own
    BatchNorm statistics and triplet mining, as on its rank), the loss = mean of the shards' losses,
    the memory updated with the union of the shards."""
    data = load_reid_data(root, cfg.layout)
    seed_everything(cfg.seed)
    model_cfg = cfg.model_config(data.num_train_pids)
    model = build_model(model_cfg).train()
    optimizer, _ = build_optimizer(model, cfg, pretrained=False)
    loaders = [build_train_loader(data.train, cfg, model_cfg, rank=r, world_size=WORLD) for r in range(WORLD)]
    total = cfg.epochs * len(loaders[0]) if cfg.schedule == "cosine" else None
    schedule = WarmupStepSchedule(optimizer, cfg.warmup_iters, cfg.warmup_start_lr / cfg.lr_new, cfg.milestones,
                                  cfg.gamma, total)
    step = 0
    for epoch in range(cfg.epochs):
        for shards in zip(*(loader.epoch(epoch) for loader in loaders), strict=True):
            schedule.set(step, epoch)
            losses, feats, labels = [], [], []
            for frames, pids, cams, plats, _ in shards:
                out = model(frames, cams, plats)
                losses.append(model.compute_losses(out, pids, update_memory=False)["total"])
                feats.append(model.memory_features(out).detach())
                labels.append(pids)
            model.memory.update(torch.cat(feats), torch.cat(labels))
            optimizer.zero_grad(set_to_none=True)
            (sum(losses) / WORLD).backward()
            optimizer.step()
            step += 1
    return model.state_dict()


def _params_and_proxies(model_state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model_state.items() if k in names or "memory" in k}


def test_two_ranks_stay_identical_and_match_one_process(make_easy_dataset, tmp_path: Path):
    root = make_easy_dataset(tmp_path / "data", train_ids=8, test_ids=0, train_tracklets=3, frames=5)
    cfg = _cfg()
    ranks = _spawn(cfg, root, tmp_path / "run", tmp_path / "states")
    reference = _one_process_reference(cfg, root)
    params = {n for n, _ in build_model(cfg.model_config(8)).named_parameters()}
    a, b = (_params_and_proxies(s, params) for s in ranks)
    assert any("memory.proxies" in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), f"ranks differ in {name}"
    ref = _params_and_proxies(reference, params)
    assert ref.keys() == a.keys()
    moved = 0
    for name in a:
        torch.testing.assert_close(a[name], ref[name], atol=2e-5, rtol=1e-4, msg=name)
        moved += int(not torch.equal(ranks[0][name], build_model(cfg.model_config(8)).state_dict()[name]))
    assert moved > 0  # training changed the weights, so the comparison is not between two inits
    # Rank 0 alone wrote the run: one start record with the world size, one end record.
    log = read_log(tmp_path / "run" / "log.jsonl")
    starts = [r for r in log if r["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == WORLD
    assert starts[0]["global_batch_tracklets"] == cfg.p * cfg.k * WORLD
    assert sum(r["event"] == "end" for r in log) == 1
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_resume_under_two_processes_reproduces_straight_training(make_easy_dataset, tmp_path: Path):
    root = make_easy_dataset(tmp_path / "data", train_ids=8, test_ids=0, train_tracklets=3, frames=5)
    # Adam, dropout and the split centroid pass included: every rank's RNG state is in the training state.
    cfg = _cfg(prsd=True, optimizer="adam", lr_new=1e-3, memory_init="centroids")
    _spawn(cfg, root, tmp_path / "straight", tmp_path / "s1")
    _spawn(cfg.replace(epochs=1), root, tmp_path / "split", tmp_path / "s2")
    _spawn(cfg, root, tmp_path / "split", tmp_path / "s3", resume=True)
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert [r["from_epoch"] for r in read_log(tmp_path / "split" / "log.jsonl") if r["event"] == "resume"] == [1]
    # One process cannot continue a two-process run: refused with the reason.
    shutil.rmtree(tmp_path / "split" / "final")
    with pytest.raises(TrainingError, match=r"trained by 2 process\(es\) and is resumed by 1"):
        Trainer(cfg.replace(epochs=3), root, tmp_path / "split", resume=True).fit()


@pytest.mark.skipif(not (BIN / "torchrun").is_file() or not (BIN / "sasreid").is_file(),
                    reason="torchrun / sasreid console scripts not installed in this environment")
def test_torchrun_command_trains_with_two_processes(make_easy_dataset, tmp_path: Path):
    root = make_easy_dataset(tmp_path / "data", train_ids=8, test_ids=2, train_tracklets=2, frames=5)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(WORLD), "--no-python", str(BIN / "sasreid"),
         "train", "--data", str(root), "--config", "tiny", "--device", "cpu", "--epochs", "1", "--out", str(run),
         "--p", "2", "--k", "2", "--frames", "4", "--num-workers", "0", "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "final" / "model.safetensors").is_file()
    log = read_log(run / "log.jsonl")
    assert [r["world_size"] for r in log if r["event"] == "start"] == [WORLD]
    assert [r["event"] for r in log].count("eval") == 1  # evaluated once, by rank 0
    # Only rank 0 prints the result.
    assert proc.stdout.count("served checkpoint") == 1


def test_sync_bn_on_cpu_ranks_is_refused_with_the_reason(make_easy_dataset, tmp_path: Path):
    root = make_easy_dataset(tmp_path / "data", train_ids=8, test_ids=0, train_tracklets=3, frames=5)
    out = tmp_path / "out"
    out.mkdir()
    mp.start_processes(_refusal_main, args=(_free_port(), _cfg(sync_bn=True), str(root), str(tmp_path / "run"),
                                            str(out)), nprocs=WORLD, start_method="spawn", join=True)
    for rank in range(WORLD):
        assert "--sync-bn needs CUDA" in (out / f"rank{rank}.txt").read_text()
