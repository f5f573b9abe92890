"""``sasreid evaluate``: metrics per case (A->G, G->A, A->A), mAP-3, submission CSV and CMC plot.

Besides the standard figures it prints the cross-session protocol (clothing-changed first) when the
root's records carry sessions, each descriptor branch alone, and, with ``--leaderboard-metric``, the
VReID-XFD organisers' scorer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.checkpoint import CheckpointError
from model.data import DatasetError
from model.engine.cache import CACHE_ENV
from model.engine.cmc_plot import plot_cmc
from model.engine.datasets import LAYOUTS
from model.engine.evaluate import evaluate_checkpoint
from model.engine.evaluator import RerankParams
from model.engine.submission import write_submission


def add_rerank_arguments(parser: argparse.ArgumentParser, defaults: RerankParams) -> None:
    """``--rerank`` and ``--k1/--k2/--lambda``, defaulting to the fields of ``defaults``."""
    parser.add_argument("--rerank", action="store_true", help="also report k-reciprocal re-ranked metrics")
    parser.add_argument("--k1", type=int, default=defaults.k1, help="re-ranking k1 (default %(default)s)")
    parser.add_argument("--k2", type=int, default=defaults.k2, help="re-ranking k2 (default %(default)s)")
    parser.add_argument("--lambda", dest="lambda_value", type=float, default=defaults.lambda_value,
                        help="re-ranking lambda (default %(default)s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``sasreid evaluate``. The re-ranking defaults are ``RerankParams()``'s fields, so
    they are set in one place (``model.engine.evaluator.RerankParams``)."""
    parser.add_argument("--data", type=Path, required=True, help="dataset root (DetReIDX layout, MARS or plain)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (e.g. RUN_DIR/final)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="dataset layout (default: detect)")
    add_rerank_arguments(parser, RerankParams())
    parser.add_argument("--leaderboard-metric", action="store_true",
                        help="also report the VReID-XFD organisers' scorer (identity from <pid>_<tracklet> "
                             "names, only the query's own tracklet is junk, trapezoidal AP) beside the "
                             "standard market-1501 figures")
    parser.add_argument("--camera-centring", action="store_true",
                        help="remove each camera's mean descriptor from its query and gallery tracklets before "
                             "ranking (camera-based normalisation; uses the unlabelled test tracklets)")
    parser.add_argument("--frames", type=int, default=None, help="frames per tracklet (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=32, help="tracklets per embedding batch (default %(default)s)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"descriptor cache folder (default ${CACHE_ENV}, else "
                             "$XDG_CACHE_HOME/sasreid/descriptors, else ~/.cache/sasreid/descriptors; "
                             "never inside the dataset)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the descriptor cache")
    parser.add_argument("--json", type=Path, default=None, help="write the full report as JSON")
    parser.add_argument("--submission", type=Path, default=None, help="write the challenge submission CSV")
    parser.add_argument("--plot", type=Path, default=None, help="write a CMC-curve PNG")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        report = evaluate_checkpoint(
            args.data, args.checkpoint, rerank=args.rerank, k1=args.k1, k2=args.k2,
            lambda_value=args.lambda_value, layout=args.layout, frames=args.frames,
            batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
            cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=not args.no_progress,
            leaderboard=args.leaderboard_metric, camera_centring=args.camera_centring,
        )
    except (DatasetError, CheckpointError, ValueError) as exc:
        print(f"sasreid evaluate: {exc}", file=sys.stderr)
        return 2
    meta = report.meta
    print(f"checkpoint {meta['checkpoint']} (fingerprint {meta['fingerprint']}), data {meta['data_root']}, "
          f"{meta['frames']} frames/tracklet; embedded {meta['embedded_tracklets']}, "
          f"from cache {meta['cached_tracklets']}")
    print(report.format_table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    if args.submission is not None:
        rows = write_submission(args.submission, report)
        order = "re-ranked" if args.rerank else "cosine-distance"
        print(f"submission written to {args.submission} ({rows} rows, {order} order)")
    if args.plot is not None:
        print(f"CMC plot written to {plot_cmc(report, args.plot, title=f'CMC - {args.checkpoint}')}")
    return 0
