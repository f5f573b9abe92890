"""``sasreid train``: train SAS-VPReID on a dataset folder (recipe defaults per ``--config``).

Options left unset take the recipe's value (``TrainConfig.recipe``). With ``--resume`` the run's
saved ``train_config.json`` is used; only options that do not change the computation
(``--epochs``, ``--eval-every``, ``--ckpt-every``, ``--device``, ...) may then differ from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from model.checkpoint import CheckpointError
from model.config import PRESETS
from model.data import DatasetError
from model.engine.config import RESUME_MUTABLE, TrainConfig, resume_conflicts
from model.engine.datasets import LAYOUTS
from model.engine.trainer import CONFIG_FILE, Trainer, TrainingError
from model.weights import WeightsError

# argparse dest -> TrainConfig field, for options whose names differ.
_FIELD_OF: dict[str, str] = {"lr": "lr_new", "no_mgtm": "mgtm", "no_prsd": "prsd", "no_memory": "memory",
                             "no_bf16": "bf16", "no_progress": "progress", "frames": "seq_len"}


def _blocks(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or an integer, got {text!r}") from None


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 10,20,30, got {text!r}") from None


def _weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers like 1,1,0.5, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three weights (v_i, h_M, f_S), got {text!r}")
    return values  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    r = TrainConfig()  # the paper's recipe, for help texts
    a = parser.add_argument
    a("--data", type=Path, required=True, help="dataset root (DetReIDX layout incl. SynthXFD, MARS or plain)")
    a("--config", choices=sorted(PRESETS), required=True, help="model config; also selects the recipe defaults")
    a("--out", type=Path, required=True, help="run folder (checkpoints, log.jsonl, final/)")
    a("--clip-weights", type=Path, default=None,
      help="local pretrained CLIP file (OpenAI .pt, open_clip or safetensors); without it the backbone "
           "is randomly initialised and trains at the new-module lr")
    a("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    a("--layout", choices=LAYOUTS, default=None, help="dataset layout (default: detect)")
    a("--epochs", type=int, default=None, help=f"epochs (paper: {r.epochs}; tiny recipe: fewer)")
    a("--device", default=None, help="cpu or cuda (bf16 autocast on cuda)")
    a("--eval-every", type=int, default=None, help="evaluate every N epochs (default: only at the end)")
    a("--ckpt-every", type=int, default=None, help="checkpoint every N epochs (and at the end)")
    a("--keep-states", type=int, default=None, help="checkpoints that keep their optimizer state (default 1)")
    a("--seed", type=int, default=None, help="random seed (default 0)")
    a("--train-identity", choices=("person", "outfit"), default=None,
      help="training classes: each person across sessions (person, default: clothing-changed re-id, the "
           "papers') or each person in each session, one outfit (outfit: short-term, same-outfit re-id)")
    g = parser.add_argument_group("batch and schedule (defaults: the recipe of --config)")
    g.add_argument("--p", type=int, default=None, help=f"identities per batch (paper {r.p})")
    g.add_argument("--k", type=int, default=None, help=f"tracklets per identity (paper {r.k})")
    g.add_argument("--frames", "-T", type=int, default=None, help=f"frames per training tracklet (paper {r.seq_len})")
    g.add_argument("--lr", type=float, default=None, help=f"lr of new modules (paper {r.lr_new})")
    g.add_argument("--lr-pretrained", type=float, default=None,
                   help=f"lr of the pretrained CLIP tower (paper {r.lr_pretrained}; used only with --clip-weights)")
    g.add_argument("--warmup-iters", type=int, default=None, help=f"warm-up iterations (paper {r.warmup_iters})")
    g.add_argument("--warmup-start-lr", type=float, default=None, help=f"warm-up start lr (paper {r.warmup_start_lr})")
    g.add_argument("--schedule", choices=("step", "cosine"), default=None,
                   help="after warm-up: x gamma at --milestones (step, paper) or a cosine decay to 0 (cosine)")
    g.add_argument("--milestones", type=_milestones, default=None, help="lr x gamma from these epochs (paper 10,20,30)")
    g.add_argument("--gamma", type=float, default=None, help=f"lr decay factor (paper {r.gamma})")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                   help="Adam (paper, default) or SGD with momentum 0.9")
    g.add_argument("--weight-decay", type=float, default=None, help=f"Adam weight decay (default {r.weight_decay})")
    g.add_argument("--crop-pad", type=int, default=None, help="random translation by up to N pixels (0 = off)")
    g.add_argument("--jitter-p", type=float, default=None,
                   help="probability of brightness / contrast / saturation jitter per tracklet (0 = off)")
    g.add_argument("--jitter", type=float, default=None, help="jitter factors drawn from [1 - J, 1 + J]")
    g.add_argument("--gray-p", type=float, default=None, help="probability of a greyscale tracklet (0 = off)")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the global grad norm (default: off)")
    g.add_argument("--weight-average", type=float, default=None, metavar="DECAY",
                   help="serve an exponential moving average of the weights with this decay, e.g. 0.999 "
                        "(default: off, the paper's last iterate; checkpoints/ keep the last iterate)")
    m = parser.add_argument_group("model options and ablations")
    m.add_argument("--no-mgtm", action="store_const", const=False, default=None, help="ablation: no MGTM branch")
    m.add_argument("--no-prsd", action="store_const", const=False, default=None, help="ablation: no PRSD branch")
    m.add_argument("--no-memory", action="store_const", const=False, default=None, help="ablation: no proxy memory")
    m.add_argument("--memory-init", choices=("online", "centroids"), default=None,
                   help="proxies set at first sight and updated by momentum (online, paper) or reset to class "
                        "centroids each epoch (centroids, public code)")
    m.add_argument("--memory-momentum", type=float, default=None, help="proxy momentum mu (paper 0.2)")
    m.add_argument("--memory-temperature", type=float, default=None,
                   help="memory temperature tau (default 0.05 as the public code; paper 1.0)")
    m.add_argument("--memory-input", choices=("bnneck", "raw"), default=None,
                   help="features the memory compares: BNNeck'd v_i (default, public code) or raw v_i (paper)")
    m.add_argument("--branch-grad", choices=("detach", "scale", "full"), default=None,
                   help="gradient from MGTM/PRSD into the backbone: none (detach, default, public code), "
                        "x --branch-grad-scale (scale) or all (full, paper)")
    m.add_argument("--branch-grad-scale", type=float, default=None, help="factor for --branch-grad scale")
    m.add_argument("--descriptor-weights", type=_weights, default=None,
                   help="weights of v_i,h_M,f_S in the descriptor, e.g. 1,0.5,0 (0 leaves a branch out)")
    m.add_argument("--input-norm", choices=("dataset", "frame"), default=None,
                   help="frame: standardise each frame's channels inside the model (camera colour cast)")
    m.add_argument("--trainable-blocks", type=_blocks, default=None, help="train only the last N ViT blocks, or all")
    m.add_argument("--temporal-pool", choices=("mean", "attention"), default=None, help="v_i pooling")
    m.add_argument("--side-info", choices=("none", "camera", "platform", "both"), default=None,
                   help="camera/platform embedding on the class token (paper 2)")
    m.add_argument("--scan-chunk", type=int, default=None, help="pure-PyTorch Mamba scan chunk (speed only)")
    x = parser.add_argument_group("machinery")
    x.add_argument("--compile", action="store_const", const=True, default=None, help="torch.compile the model")
    x.add_argument("--grad-checkpointing", action="store_const", const=True, default=None,
                   help="activation checkpointing in the ViT")
    x.add_argument("--sync-bn", action="store_const", const=True, default=None,
                   help="distributed CUDA runs: BatchNorm statistics over the global batch (SyncBatchNorm)")
    x.add_argument("--no-bf16", action="store_const", const=False, default=None, help="no bf16 autocast on CUDA")
    x.add_argument("--num-workers", type=int, default=None, help="data loader workers (default 2)")
    x.add_argument("--frame-cache-mb", type=int, default=None,
                   help="keep decoded training frames in memory up to this many MiB (with --num-workers 0)")
    x.add_argument("--log-every", type=int, default=None, help="iterations between step records in log.jsonl")
    x.add_argument("--eval-frames", type=int, default=None, help="frames per test tracklet (default: model's 8)")
    x.add_argument("--eval-batch-size", type=int, default=None, help="tracklets per embedding batch")
    x.add_argument("--no-progress", action="store_const", const=False, default=None, help="hide progress bars")


_NOT_CONFIG = {"data", "config", "out", "clip_weights", "resume", "_command"}


def requested_fields(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given explicitly on the command line."""
    return {_FIELD_OF.get(k, k): v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig: recipe + explicit options, or the saved config on --resume."""
    requested = requested_fields(args)
    saved_path = args.out / CONFIG_FILE
    if args.resume and saved_path.is_file():
        saved = TrainConfig.load(saved_path)
        if saved.model != args.config:
            raise ValueError(f"--resume: {args.out} was trained with --config {saved.model}, not {args.config}")
        conflicts = resume_conflicts(saved, requested)
        if conflicts:
            raise ValueError("--resume cannot change " + "; ".join(conflicts))
        return saved.replace(**{k: v for k, v in requested.items() if k in RESUME_MUTABLE})
    return TrainConfig.recipe(args.config, **requested)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = resolve_config(args)
        trainer = Trainer(cfg, args.data, args.out, clip_weights=args.clip_weights, resume=args.resume)
        result = trainer.fit()
    except (DatasetError, TrainingError, CheckpointError, WeightsError, ValueError) as exc:
        print(f"sasreid train: {exc}", file=sys.stderr)
        return 2
    if not trainer.ctx.is_main:  # under torchrun, rank 0 reports for the run
        return 0
    print(f"trained {result.epochs} epochs in {result.train_seconds:.1f} s; served checkpoint: {result.final_checkpoint}")
    if result.report is not None:
        print(result.report.format_table())
    return 0
