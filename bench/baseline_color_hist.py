"""Colour-histogram baseline for the A->G, G->A, A->A cases, under the same protocol as the model.

Descriptor of a tracklet: for each of ``--frames`` evenly spaced frames, a joint HSV histogram
(``--bins`` H x S x V bins, normalised to sum 1), averaged over the frames, square-rooted
(Hellinger: cosine of the roots = Bhattacharyya coefficient) and L2-normalised. Ranked by cosine
distance with ``model.engine.evaluator.ReIDEvaluator``, with and without k-reciprocal re-ranking.

    python bench/baseline_color_hist.py --data data/synthxfd --rerank --json runs/baseline.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.data import DatasetError, Tracklet
from model.engine.datasets import LAYOUTS, load_reid_data, require_cases
from model.engine.evaluate import unique_records
from model.engine.evaluator import ReIDEvaluator, RerankParams
from model.engine.report import EvalReport, markdown_table
from model.sampling import even_indices


def hsv_histogram(image: Image.Image, bins: tuple[int, int, int]) -> np.ndarray:
    """Joint HSV histogram of one image, ``prod(bins)`` values summing to 1."""
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.int64).reshape(-1, 3)
    idx = [np.minimum(hsv[:, c] * b // 256, b - 1) for c, b in enumerate(bins)]
    flat = (idx[0] * bins[1] + idx[1]) * bins[2] + idx[2]
    hist = np.bincount(flat, minlength=int(np.prod(bins))).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def tracklet_descriptor(t: Tracklet, frames: int, bins: tuple[int, int, int]) -> np.ndarray:
    """Mean frame histogram of ``frames`` evenly spaced frames, square-rooted and L2-normalised."""
    hists = []
    for i in even_indices(t.num_frames, frames).tolist():
        with Image.open(t.paths[i]) as img:
            hists.append(hsv_histogram(img, bins))
    d = np.sqrt(np.mean(hists, axis=0))
    return (d / max(np.linalg.norm(d), 1e-12)).astype(np.float32)


def evaluate_color_hist(data_root: Path, layout: str = "auto", frames: int = 8, bins: tuple[int, int, int] = (8, 4, 4),
                        rerank: RerankParams | None = None, progress: bool = True,
                        camera_centring: bool = False) -> EvalReport:
    """Describe every query/gallery tracklet once and evaluate all cases (``camera_centring``: as
    ``sasreid evaluate --camera-centring``)."""
    data = load_reid_data(data_root, layout)
    require_cases(data)
    records = unique_records(data.cases)
    start = time.perf_counter()
    desc = np.stack([tracklet_descriptor(t, frames, bins)
                     for t in tqdm(records, desc="histograms", unit="tracklet", disable=not progress)])
    seconds = time.perf_counter() - start
    evaluator = ReIDEvaluator(data.cases, rerank=rerank, camera_centring=camera_centring)
    evaluator.process(desc, records)
    evaluator.evaluate()
    report = evaluator.report
    assert report is not None
    report.meta.update(method="hsv-histogram", bins=list(bins), frames=frames, data_root=str(data.root),
                       tracklets=len(records), describe_seconds=round(seconds, 2))
    return report


def _bins(text: str) -> tuple[int, int, int]:
    parts = tuple(int(x) for x in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--bins needs three positive integers H,S,V, got {text!r}")
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto")
    parser.add_argument("--frames", type=int, default=8, help="evenly spaced frames per tracklet (default 8)")
    parser.add_argument("--bins", type=_bins, default=(8, 4, 4), help="H,S,V bins (default 8,4,4)")
    parser.add_argument("--rerank", action="store_true", help="also report k-reciprocal re-ranked metrics")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = evaluate_color_hist(args.data, args.layout, args.frames, args.bins,
                                     RerankParams() if args.rerank else None, not args.no_progress)
    except DatasetError as exc:
        print(f"baseline_color_hist: {exc}", file=sys.stderr)
        return 2
    print(report.format_table())
    print()
    print(markdown_table([("HSV colour histogram", report)]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
