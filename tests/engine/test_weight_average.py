"""The weight average: the EMA equation, swapping weights in and out, and a training run serving it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.engine.config import TrainConfig
from model.engine.runlog import read_log
from model.engine.trainer import Trainer
from model.engine.weight_average import WeightAverage, average_decay


def test_decay_ramps_up_then_holds():
    assert average_decay(0.999, 0) == pytest.approx(0.1)
    assert average_decay(0.999, 10) == pytest.approx(11 / 20)
    assert average_decay(0.999, 100_000) == 0.999


def test_average_follows_the_ema_equation_and_copies_integer_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(net, decay=0.5)
    expected = net[0].weight.detach().clone()
    for step in range(4):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        net.train()(torch.randn(5, 3))  # moves BN's running stats and num_batches_tracked
        d = average_decay(0.5, step)
        expected = d * expected + (1 - d) * net[0].weight.detach()
        avg.update(net)
    torch.testing.assert_close(avg.shadow["0.weight"], expected)
    assert int(avg.shadow["1.num_batches_tracked"]) == 4
    assert not torch.equal(avg.shadow["0.weight"], net[0].weight)


def test_applied_swaps_the_average_in_and_restores_the_model():
    net = torch.nn.Linear(4, 4)
    avg = WeightAverage(net, decay=0.9)
    own = net.weight.detach().clone()
    avg.shadow["weight"].fill_(3.0)
    with avg.applied(net):
        assert torch.all(net.weight == 3.0)
    torch.testing.assert_close(net.weight.detach(), own)


def test_state_round_trip_and_mismatch_is_refused():
    a = torch.nn.Linear(2, 2)
    avg = WeightAverage(a, decay=0.99)
    avg.update(a)
    other = WeightAverage(torch.nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(avg.state_dict())
    assert other.updates == 1 and other.decay == 0.99
    torch.testing.assert_close(other.shadow["weight"], avg.shadow["weight"])
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage(torch.nn.Linear(2, 3, bias=False), decay=0.5).load_state_dict(avg.state_dict())


def test_decay_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="weight_average"):
        TrainConfig.recipe("tiny", weight_average=1.0)


def _cfg(**kw) -> TrainConfig:
    base = dict(p=2, k=2, seq_len=4, num_workers=0, eval_frames=4, progress=False, log_every=1,
                weight_average=0.9)
    return TrainConfig.recipe("tiny", **{**base, **kw})


def test_run_serves_the_average_and_resumes_it_exactly(make_easy_dataset, tmp_path: Path):
    root = make_easy_dataset(tmp_path / "data", train_ids=4, test_ids=0, train_tracklets=2, frames=5)
    cfg = _cfg(epochs=2, ckpt_every=1)
    Trainer(cfg, root, tmp_path / "straight").fit()
    final = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    last = load_file(str(tmp_path / "straight" / "checkpoints" / "epoch_002" / "model.safetensors"))
    # final/ holds the average, the epoch checkpoint the last iterate: they differ.
    name = next(k for k in final if k.endswith("weight") and final[k].is_floating_point())
    assert not torch.equal(final[name], last[name])
    log = read_log(tmp_path / "straight" / "log.jsonl")
    assert [r["final_weights"] for r in log if r["event"] == "end"] == ["average"]

    Trainer(cfg.replace(epochs=1), root, tmp_path / "split").fit()
    Trainer(cfg, root, tmp_path / "split", resume=True).fit()
    resumed = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    for key in final:
        torch.testing.assert_close(final[key], resumed[key], atol=1e-6, rtol=0, msg=key)
