"""``sasreid enroll`` and ``sasreid query``: the API from the command line.

``sasreid enroll --url URL DIR`` enrolls a dataset folder's gallery tracklets: the tracklet id is
the tracklet folder name, the identity the person folder name, camera/platform/session come from
the dataset loader (frame names or ``manifest.csv``). Re-running it is safe: tracklets already
stored with the same content are counted as existing, not duplicated. A tracklet with more frames
than the server accepts (``max_frames_per_tracklet`` from ``/v1/stats``) is uploaded as that many
frames evenly spaced in time (deterministic, so re-runs upload the same frames). Frames that are
not JPEG/PNG/WebP files (``.bmp``) are converted to PNG before upload.

``sasreid query --url URL TRACKLET_DIR`` ranks gallery identities for one folder of frames.

The API key comes from ``--api-key`` or the ``SASREID_API_KEY`` environment variable.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.client import ApiClientError, SasreidClient

_UPLOADABLE = {".jpg", ".jpeg", ".png", ".webp"}
_FRAME_SUFFIXES = _UPLOADABLE | {".bmp"}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--url", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None, help="API key (default: $SASREID_API_KEY)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    if command == "enroll":
        parser.add_argument("dir", type=Path, help="dataset root")
        parser.add_argument("--layout", choices=["detreidx", "plain"], default="detreidx")
        parser.add_argument(
            "--cases",
            default="all",
            help="detreidx cases, comma-separated: case1,case2,case3 or full folder names (default all)",
        )
        parser.add_argument("--split", default="gallery", help="split to enroll (default gallery)")
        parser.add_argument("--workers", type=int, default=2, help="concurrent uploads (default 2)")
    elif command == "query":
        parser.add_argument("tracklet_dir", type=Path, help="folder with the query tracklet's frames")
        parser.add_argument("--top-k", type=int, default=10)
        parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
        parser.add_argument("--platform", choices=["aerial", "ground"], default=None, help="gallery platform filter")
        parser.add_argument(
            "--since", default=None, help="only gallery tracklets enrolled at or after this time (unix seconds or RFC 3339)"
        )
        parser.add_argument("--until", default=None, help="only gallery tracklets enrolled before this time")
        parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    else:
        raise ValueError(f"unknown command {command!r}")


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("SASREID_API_KEY")
    try:
        with SasreidClient(args.url, api_key=api_key, timeout=args.timeout) as client:
            if args._command == "enroll":
                return _enroll(client, args)
            return _query(client, args)
    except httpx.TransportError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    except ApiClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ---- frames --------------------------------------------------------------------------------------
def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    from model.data import natural_key

    return natural_key(name)


def pick_frames(paths: Sequence[Path], limit: int) -> list[Path]:
    if len(paths) <= limit:
        return list(paths)
    from model.sampling import even_indices

    return [paths[i] for i in even_indices(len(paths), limit).tolist()]


def read_frame(path: Path) -> tuple[str, bytes]:
    if path.suffix.lower() in _UPLOADABLE:
        return path.name, path.read_bytes()
    from PIL import Image

    with Image.open(path) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
    return path.with_suffix(".png").name, out.getvalue()


# ---- enroll --------------------------------------------------------------------------------------
@dataclass
class _Job:
    tracklet_id: str
    identity: str
    paths: list[Path]
    camera: str | None
    platform: str | None
    session: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _case_names(spec: str, available: Sequence[str]) -> list[str]:
    if spec == "all":
        return list(available)
    names: list[str] = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        match = [c for c in available if c == token or c.split("_", 1)[0] == token]
        if not match:
            raise ValueError(f"unknown case {token!r}; this dataset has {', '.join(available) or 'no cases'}")
        names.extend(m for m in match if m not in names)
    return names


def collect_jobs(root: Path, layout: str, cases: str, split: str) -> list[_Job]:
    """The tracklets to enroll, one job per tracklet id (a tracklet shared by several cases once)."""
    from model.data import load_detreidx, load_plain

    if layout == "detreidx":
        dataset = load_detreidx(root, progress=False)
        tracklets = []
        for name in _case_names(cases, list(dataset.cases)):
            case = dataset.cases[name]
            if split not in ("gallery", "query"):
                raise ValueError(f"detreidx cases have splits gallery and query, not {split!r}")
            tracklets.extend(case.gallery if split == "gallery" else case.query)
    else:
        plain = load_plain(root, progress=False)
        if split not in plain.splits:
            raise ValueError(f"no split {split!r} under {root}; found {', '.join(plain.splits) or 'none'}")
        tracklets = plain.splits[split]
    jobs: dict[str, _Job] = {}
    for t in tracklets:
        if t.tracklet_id in jobs:
            continue
        jobs[t.tracklet_id] = _Job(
            tracklet_id=t.tracklet_id,
            identity=t.paths[0].parent.parent.name,
            paths=sorted(t.paths, key=lambda p: _natural(p.name)),
            camera=str(t.camera),
            platform=t.platform,
            session=None if t.session is None else str(t.session),
            metadata={k: v for k, v in t.metadata.items() if v is not None},
        )
    return list(jobs.values())


def _enroll(client: SasreidClient, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.data import DatasetError

    stats = client.stats()  # fails early on a wrong URL or key
    limit = int(stats.get("max_frames_per_tracklet", 64))
    try:
        jobs = collect_jobs(args.dir, args.layout, args.cases, args.split)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not jobs:
        print(f"nothing to enroll: no {args.split} tracklets under {args.dir}", file=sys.stderr)
        return 1

    def upload(job: _Job) -> bool:
        frames = [read_frame(p) for p in pick_frames(job.paths, limit)]
        result = client.enroll(
            frames,
            identity=job.identity,
            tracklet_id=job.tracklet_id,
            camera=job.camera,
            platform=job.platform,
            session=job.session,
            metadata=job.metadata,
        )
        return result.created

    created = existing = 0
    failures: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool, tqdm(
        total=len(jobs), unit="tracklet", desc="enroll"
    ) as bar:
        futures = {pool.submit(upload, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                if future.result():
                    created += 1
                else:
                    existing += 1
            except ApiClientError as exc:
                if exc.status in (401, 403):
                    pool.shutdown(cancel_futures=True)
                    raise
                failures.append((job.tracklet_id, str(exc)))
            except OSError as exc:
                failures.append((job.tracklet_id, f"cannot read frames: {exc}"))
            bar.update(1)
    print(
        f"enrolled {created} new, {existing} already stored, {len(failures)} failed "
        f"(of {len(jobs)} tracklets from {args.dir})"
    )
    for tracklet_id, message in failures[:10]:
        print(f"  {tracklet_id}: {message}", file=sys.stderr)
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more", file=sys.stderr)
    return 1 if failures else 0


# ---- query ---------------------------------------------------------------------------------------
def _query(client: SasreidClient, args: argparse.Namespace) -> int:
    folder: Path = args.tracklet_dir
    if not folder.is_dir():
        print(f"error: {folder} is not a folder of frames", file=sys.stderr)
        return 2
    paths = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _FRAME_SUFFIXES),
        key=lambda p: _natural(p.name),
    )
    if not paths:
        print(f"error: no image files (.jpg, .png, .webp, .bmp) in {folder}", file=sys.stderr)
        return 2
    limit = int(client.stats().get("max_frames_per_tracklet", 64))
    frames = [read_frame(p) for p in pick_frames(paths, limit)]
    answer = client.query(
        frames=frames, top_k=args.top_k, rerank=args.rerank, platform=args.platform, since=args.since, until=args.until
    )
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"query {folder} ({len(frames)} frames){' re-ranked' if answer['reranked'] else ''}:")
    print(f"{'rank':>4}  {'identity':<24} {'score':>8}  best tracklets")
    for hit in answer["results"]:
        best = ", ".join(t["tracklet_id"] for t in hit["tracklets"][:3])
        print(f"{hit['rank']:>4}  {hit['identity']:<24} {hit['score']:>8.4f}  {best}")
    if not answer["results"]:
        print("  (the gallery is empty or nothing matches the filters)")
    t = answer["timings_ms"]
    print(f"timings: embed {t['embed']:.0f} ms, search {t['search']:.1f} ms, total {t['total']:.0f} ms")
    return 0
