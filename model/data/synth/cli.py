"""``sasreid synth``: generate the SynthXFD benchmark and/or its preview contact sheet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.data.synth.generate import generate_synth
from model.data.synth.plan import SynthConfig
from model.data.synth.preview import render_preview

_DEFAULTS = SynthConfig()
_PREVIEW_DEFAULT = "synthxfd_preview.png"


_EPILOG = (
    "Each case (A->G, G->A, A->A) holds, for every query, gallery positives of two kinds: the same "
    "session (same outfit, seen from the other platform, or for A->A from another UAV point) and the "
    "other session (other outfit); manifest.csv records each tracklet's session and camera so an "
    "evaluator can tell them apart. No positive shares the query's camera."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG
    parser.add_argument("--out", type=Path, default=None, help="output dataset folder (DetReIDX layout)")
    parser.add_argument("--ids", type=int, default=_DEFAULTS.ids, help="train + test identities (default %(default)s)")
    parser.add_argument("--test-ids", type=int, default=None, help="test identities (default: half of --ids, at most 50)")
    parser.add_argument(
        "--tracklets-per-id", type=int, default=_DEFAULTS.tracklets_per_id,
        help="tracklets per identity over both sessions and platforms, >= 4; test identities get at least "
        "2 aerial tracklets per session (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--frames", type=int, default=_DEFAULTS.frames, help="max frames per tracklet (default %(default)s)")
    parser.add_argument("--min-frames", type=int, default=None, help="min frames per tracklet (default: 3/4 of --frames)")
    parser.add_argument(
        "--distractors", type=float, default=_DEFAULTS.distractor_fraction,
        help="fraction of test identities that are gallery-only per case (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="random seed (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="render processes (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous build in --out")
    parser.add_argument(
        "--preview", nargs="?", const=_PREVIEW_DEFAULT, default=None, metavar="PNG",
        help="write a contact sheet PNG of a few identities across views and sessions "
        f"(bare --preview: {_PREVIEW_DEFAULT} inside --out, or in the current folder)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    if args.out is None and args.preview is None:
        print("sasreid synth: give --out DIR to generate a dataset and/or --preview [PNG]", file=sys.stderr)
        return 2
    config = SynthConfig(
        ids=args.ids,
        test_ids=args.test_ids,
        tracklets_per_id=args.tracklets_per_id,
        frames=args.frames,
        min_frames=args.min_frames,
        distractor_fraction=args.distractors,
        seed=args.seed,
    )
    try:
        config.validate()
        if args.out is not None:
            summary = generate_synth(
                config, args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress
            )
            print(summary.format())
        if args.preview is not None:
            preview = Path(args.preview)
            if args.preview == _PREVIEW_DEFAULT and args.out is not None:
                preview = args.out / _PREVIEW_DEFAULT
            print(f"preview written to {render_preview(config, preview)}")
    except (ValueError, FileExistsError) as exc:
        print(f"sasreid synth: {exc}", file=sys.stderr)
        return 2
    return 0
