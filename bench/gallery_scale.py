"""Gallery at scale (issue 10, item 6): bulk import, start, query latency and recall@10 of the vector
index kinds ``flat`` (FAISS, exact), ``hnsw`` (FAISS, approximate) and ``milvus`` (milvus-lite, a
``*.db`` file) at 100k and 1M synthetic descriptors of dim 768.

In-process, at the ``index.gallery.Gallery`` level (no HTTP, no model): a real SQLite store file is
the system of record, as in ``sasreid serve``.

Synthetic descriptors: clustered unit vectors. Identities come in families of ``FAMILY`` similar
looking people (a shared family direction), each identity has ``TRACKLETS`` gallery tracklets, and
a tracklet is its identity's centre plus a camera bias (one of ``CAMERAS`` directions) plus
isotropic noise, normalised. Queries are held-out tracklets (same model, fresh noise, not in the
gallery) of ``--queries`` random gallery identities.

Measured per size and kind:

* **bulk import**: ``store.put_many`` in batches of 1000 (the service's bulk-import path, measured
  once per size: every kind indexes the same store) plus the kind's index writes
  (``Gallery.add``, graph off); items/s = N / (store s + index s);
* **re-ranking graph build** (once per store, k = 30, then saved in the store and reused by every
  kind: it is independent of the vector index);
* **start**: a new ``Gallery`` opened from the existing store the way ``Runtime.restore_gallery``
  does it (FAISS: ``rebuild_from`` re-adds every stored vector; Milvus: ``reconcile``, counts and a
  digest of the ids, nothing re-added), with the re-ranking graph loaded from the store where
  re-ranking is measured (its part is reported separately);
* **query** p50 / p99 (ms, one query at a time, ``Gallery.search`` top_k 10, 200 candidates) plain
  and re-ranked (``RerankParams()`` defaults k1 3, k2 1), alternating per query;
* **recall@10**: overlap of each kind's plain top-10 tracklets with the exact top-10 (a numpy
  brute-force scan); for re-ranked queries, overlap with the flat gallery's re-ranked top-10; and
  identity rank-1 accuracy plain / re-ranked, to show the data are neither trivial nor hopeless.

Above ``--rerank-max`` (default 100k) re-ranking is not measured: the graph build is O(N^2)
(about 100x the 100k build at 1M). ``--limit KIND=N`` skips a kind above N items (the section says
so, with an estimate from the largest measured size).

Writes the section "## Gallery at scale" of bench/RESULTS.md after each size (``--no-write`` to
skip). ``--quick``: 10k only. Usage: ``python bench/gallery_scale.py [--sizes 100000,1000000]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.results import machine_line, write_section  # noqa: E402

SECTION = "Gallery at scale"
DIM = 768
TRACKLETS = 10  # gallery tracklets per identity
FAMILY = 4  # identities sharing a family direction
CAMERAS = 8
FAMILY_WEIGHT = 0.6  # family direction against the identity's own (both unit)
CAMERA_WEIGHT = 0.35
NOISE = 2.5  # norm of the noise against the unit identity centre
GRAPH_K = 30
FINGERPRINT = "bench-gallery-scale-768"
BATCH = 1000
KINDS = ("flat", "hnsw", "milvus")


# ---- synthetic data ---------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Synthetic:
    """The gallery's descriptors (row i = tracklet i), their identities and cameras, and the queries."""

    feats: np.ndarray  # float32 [n, DIM]
    identity: np.ndarray  # int64 [n]
    camera: np.ndarray  # int64 [n]
    queries: np.ndarray  # float32 [q, DIM]
    query_identity: np.ndarray  # int64 [q]


def synthesize(n: int, queries: int, seed: int = 0) -> Synthetic:
    """``n`` clustered unit descriptors and ``queries`` held-out query tracklets (deterministic)."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // TRACKLETS)
    n_fam = max(1, -(-n_ids // FAMILY))
    families = _unit(rng.standard_normal((n_fam, DIM), dtype=np.float32))
    cams = _unit(rng.standard_normal((CAMERAS, DIM), dtype=np.float32))
    centres = np.empty((n_ids, DIM), dtype=np.float32)
    for lo in range(0, n_ids, 50_000):
        hi = min(n_ids, lo + 50_000)
        own = _unit(rng.standard_normal((hi - lo, DIM), dtype=np.float32))
        centres[lo:hi] = _unit(FAMILY_WEIGHT * families[np.arange(lo, hi) // FAMILY] + own)
    identity = np.minimum(np.arange(n, dtype=np.int64) // TRACKLETS, n_ids - 1)
    camera = rng.integers(0, CAMERAS, n)

    def tracklets(ids: np.ndarray, cam: np.ndarray) -> np.ndarray:
        noise = _unit(rng.standard_normal((len(ids), DIM), dtype=np.float32))
        return _unit(centres[ids] + CAMERA_WEIGHT * cams[cam] + NOISE * noise)

    feats = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 50_000):
        hi = min(n, lo + 50_000)
        feats[lo:hi] = tracklets(identity[lo:hi], camera[lo:hi])
    query_identity = rng.choice(n_ids, size=queries, replace=queries > n_ids)
    query_feats = tracklets(query_identity, rng.integers(0, CAMERAS, queries))
    return Synthetic(feats, identity, camera, query_feats, query_identity)


def exact_top(feats: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """The exact top-k ids (int64 [q, k]) of each query by cosine, ties by lower id (brute force)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.empty((len(queries), 0), dtype=np.int64)
    for lo in range(0, len(feats), 65_536):
        s = queries @ feats[lo : lo + 65_536].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        best_i = np.concatenate([best_i, ids[lo : lo + 65_536][part]], axis=1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, order, axis=1)
        best_i = np.take_along_axis(best_i, order, axis=1)
    return best_i


# ---- store and galleries ----------------------------------------------------------------------
def fill_store(path: Path, data: Synthetic) -> tuple[float, np.ndarray, list[Any]]:
    """Write the gallery into a new SQLite store in batches of ``BATCH``; returns (seconds, the
    store's int ids in row order, the gallery entries)."""
    from index.store import Record, SQLiteStore
    from index.types import GalleryEntry

    ids = np.empty(len(data.feats), dtype=np.int64)
    entries: list[Any] = []
    store = SQLiteStore(path)
    t0 = time.perf_counter()
    try:
        for lo in range(0, len(data.feats), BATCH):
            hi = min(len(data.feats), lo + BATCH)
            results = store.put_many([
                Record(
                    tracklet_id=f"t{i:07d}", identity=f"p{int(data.identity[i]):06d}",
                    camera=f"c{int(data.camera[i])}", platform="ground", session=None, num_frames=8,
                    fingerprint=FINGERPRINT, descriptor=data.feats[i], content_hash=f"h{i}",
                )
                for i in range(lo, hi)
            ])
            for j, res in enumerate(results):
                ids[lo + j] = res.record.int_id
                entries.append(GalleryEntry.from_record(res.record))
    finally:
        store.close()
    return time.perf_counter() - t0, ids, entries


def index_params(kind: str, work: Path, size: int) -> dict[str, Any]:
    if kind != "milvus":
        return {}
    from index.milvus_index import collection_name

    return {"uri": str(work / f"milvus{size}.db"), "collection": collection_name(FINGERPRINT)}


def import_index(kind: str, work: Path, size: int, entries: list[Any], feats: np.ndarray) -> float:
    """Index every stored item into a new gallery of ``kind`` (graph off); returns seconds."""
    from index.gallery import Gallery

    gallery = Gallery(DIM, kind=kind, graph_k=None, use_gpu=False, index_params=index_params(kind, work, size))
    try:
        t0 = time.perf_counter()
        for lo in range(0, len(entries), BATCH):
            gallery.add(entries[lo : lo + BATCH], feats[lo : lo + BATCH])
        return time.perf_counter() - t0
    finally:
        gallery.close()


def open_gallery(kind: str, work: Path, size: int, store_path: Path, graph: bool) -> tuple[Any, Any, float]:
    """(gallery, store, seconds): a gallery opened from the existing store as ``sasreid serve``
    does at start (FAISS rebuilt from the store, Milvus reconciled), the graph from the store."""
    from index.gallery import Gallery
    from index.store import SQLiteStore

    t0 = time.perf_counter()
    store = SQLiteStore(store_path)
    gallery = Gallery(
        DIM, kind=kind, graph_k=GRAPH_K if graph else None, use_gpu=False,
        index_params=index_params(kind, work, size),
    )
    if gallery.durable:
        added, removed = gallery.reconcile(store)
        if added or removed:
            raise RuntimeError(f"{kind}: reconcile found the index behind the store (+{added} -{removed})")
    else:
        gallery.rebuild_from(store)
    return gallery, store, time.perf_counter() - t0


# ---- queries ----------------------------------------------------------------------------------
@dataclass
class QueryRun:
    plain_ms: list[float] = field(default_factory=list)
    rerank_ms: list[float] = field(default_factory=list)
    plain_top: list[list[int]] = field(default_factory=list)
    rerank_top: list[list[int]] = field(default_factory=list)
    plain_rank1: list[bool] = field(default_factory=list)
    rerank_rank1: list[bool] = field(default_factory=list)


def run_queries(gallery: Any, data: Synthetic, rerank: bool, warmup: int = 5) -> QueryRun:
    """Each query plain then (with ``rerank``) re-ranked, one at a time, timed around ``search``."""
    from index.rerank import RerankParams

    params = RerankParams()
    out = QueryRun()
    for q in data.queries[:warmup]:
        gallery.search(q, top_k=10)
        if rerank:
            gallery.search(q, top_k=10, rerank=params)
    for q, ident in zip(data.queries, data.query_identity.tolist(), strict=True):
        want = f"p{ident:06d}"
        t0 = time.perf_counter()
        res = gallery.search(q, top_k=10)
        out.plain_ms.append((time.perf_counter() - t0) * 1e3)
        out.plain_top.append([h.int_id for h in res.tracklets[:10]])
        out.plain_rank1.append(bool(res.identities) and res.identities[0].identity == want)
        if rerank:
            t0 = time.perf_counter()
            res = gallery.search(q, top_k=10, rerank=params)
            out.rerank_ms.append((time.perf_counter() - t0) * 1e3)
            out.rerank_top.append([h.int_id for h in res.tracklets[:10]])
            out.rerank_rank1.append(bool(res.identities) and res.identities[0].identity == want)
    return out


def overlap(got: list[list[int]], want: np.ndarray | list[list[int]]) -> float:
    """Mean |got_i ∩ want_i| / |want_i| over the queries."""
    return float(np.mean([len(set(g) & set(map(int, w))) / max(1, len(w)) for g, w in zip(got, want, strict=True)]))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


# ---- the run ----------------------------------------------------------------------------------
@dataclass
class Row:
    size: int
    kind: str
    store_s: float
    index_s: float
    start_s: float
    graph_s: float | None
    run: QueryRun
    recall: float
    rerank_agree: float | None

    def cells(self) -> str:
        total = self.store_s + self.index_s
        rr = self.run.rerank_ms
        graph = f"{self.graph_s:.1f}" if self.graph_s is not None else "–"
        return (
            f"| {self.size:,} | {self.kind} | {self.store_s:.1f} + {self.index_s:.1f} | {self.size / total:,.0f} "
            f"| {self.start_s:.1f} | {graph} "
            f"| {pct(self.run.plain_ms, 50):.1f} / {pct(self.run.plain_ms, 99):.1f} "
            f"| {f'{pct(rr, 50):.1f} / {pct(rr, 99):.1f}' if rr else 'not measured'} "
            f"| {self.recall:.3f} | {f'{self.rerank_agree:.3f}' if self.rerank_agree is not None else '–'} "
            f"| {np.mean(self.run.plain_rank1):.3f} / "
            f"{f'{np.mean(self.run.rerank_rank1):.3f}' if rr else '–'} |"
        )


def parse_limits(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        kind, _, n = item.partition("=")
        if kind not in KINDS or not n.isdigit():
            raise SystemExit(f"--limit wants KIND=N with KIND in {KINDS}, got {item!r}")
        out[kind] = int(n)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="gallery sizes")
    parser.add_argument("--quick", action="store_true", help="10k only")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rerank-max", type=int, default=100_000, help="largest size with re-ranking")
    parser.add_argument("--limit", action="append", default=[], metavar="KIND=N",
                        help="skip KIND above N items (repeatable)")
    parser.add_argument("--note", action="append", default=[], help="a line added under the table")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    limits = parse_limits(args.limit)
    command = "python bench/gallery_scale.py " + " ".join(
        '"(a note below)"' if i > 0 and sys.argv[i] and sys.argv[i - 1] == "--note" else a
        for i, a in enumerate(sys.argv[1:], start=1)
    )
    load_start = os.getloadavg()
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    import faiss
    import pymilvus

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_gallery_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}", flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    graph_builds: list[str] = []
    rates: dict[str, tuple[int, float, float]] = {}  # kind -> (size, index s, start s) of the largest measured
    try:
        for size in sizes:
            t_size = time.perf_counter()
            data = synthesize(size, args.queries, seed=size)
            gen_s = time.perf_counter() - t_size
            store_path = work / f"g{size}.sqlite"
            store_s, ids, entries = fill_store(store_path, data)
            t0 = time.perf_counter()
            truth = exact_top(data.feats, ids, data.queries)
            print(f"{size}: generated in {gen_s:.1f}s, store filled in {store_s:.1f}s, "
                  f"exact top-10 in {time.perf_counter() - t0:.1f}s", flush=True)
            rerank = size <= args.rerank_max
            if rerank:
                from index.gallery import Gallery
                from index.store import SQLiteStore

                t0 = time.perf_counter()
                store = SQLiteStore(store_path)
                g = Gallery(DIM, kind="flat", graph_k=GRAPH_K, use_gpu=False)
                g.rebuild_from(store)
                load = g.graph_load
                g.close()
                store.close()
                del g
                gc.collect()
                build_s = load.seconds if load is not None else float("nan")
                print(f"{size}: re-ranking graph {load.source if load else '?'} in {build_s:.1f}s "
                      f"(whole start {time.perf_counter() - t0:.1f}s)", flush=True)
                graph_builds.append(f"{size:,}: {build_s:.0f} s")
            flat_rerank_top: list[list[int]] | None = None
            for kind in kinds:
                if kind in limits and size > limits[kind]:
                    why = f"{kind} not measured at {size:,} (`--limit {kind}={limits[kind]}`)"
                    if kind in rates:
                        n0, index0, start0 = rates[kind]
                        f = size / n0
                        why += (f": at the {n0:,} rate its index import would take about {index0 * f:.0f} s "
                                f"and its start about {start0 * f:.0f} s, beyond this run's CPU budget")
                    notes.append(why + ".")
                    print(why, flush=True)
                    continue
                index_s = import_index(kind, work, size, entries, data.feats)
                print(f"{size} {kind}: index import {index_s:.1f}s", flush=True)
                gc.collect()
                gallery, store, start_s = open_gallery(kind, work, size, store_path, graph=rerank)
                load = gallery.graph_load
                graph_s = load.seconds if load is not None else None
                if load is not None and load.source != "persisted":
                    raise RuntimeError(f"{kind}: the graph was {load.source}, not loaded from the store")
                print(f"{size} {kind}: start {start_s:.1f}s (graph {graph_s})", flush=True)
                try:
                    run = run_queries(gallery, data, rerank)
                finally:
                    gallery.close()
                    store.close()
                    del gallery
                    gc.collect()
                if kind == "flat":
                    flat_rerank_top = run.rerank_top
                agree = overlap(run.rerank_top, flat_rerank_top) if rerank and flat_rerank_top else None
                row = Row(size, kind, store_s, index_s, start_s, graph_s, run, overlap(run.plain_top, truth), agree)
                rows.append(row)
                rates[kind] = (size, index_s, start_s)
                print(row.cells(), flush=True)
                if not args.no_write:  # after each kind: a later one that fails leaves these figures
                    write_section(SECTION, report(rows, notes, graph_builds, args, command, began, load_start,
                                                  faiss, pymilvus), args.results)
            if not rerank:
                notes.append(
                    f"Re-ranking not measured at {size:,}: the graph build is O(N^2) "
                    f"(about {(size / args.rerank_max) ** 2:.0f}x the {args.rerank_max:,} build, "
                    "hours on this machine), so only plain queries are reported there."
                )
            del data, entries, ids
            gc.collect()
            for p in work.glob(f"*{size}*"):
                if not args.keep:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            body = report(rows, notes, graph_builds, args, command, began, load_start, faiss, pymilvus)
            print(body, flush=True)
            if not args.no_write:
                write_section(SECTION, body, args.results)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(rows: list[Row], notes: list[str], graph_builds: list[str], args: argparse.Namespace, command: str,
           began: str, load_start: tuple[float, float, float], *libs: Any) -> str:
    import milvus_lite

    load_end = os.getloadavg()
    return "\n".join([
        machine_line(np, *libs),
        "",
        f"Command: `nice -n 5 {command}` · date: {began} · milvus-lite {milvus_lite.__version__} · load average "
        f"start / end: {' '.join(f'{x:.2f}' for x in load_start)} / {' '.join(f'{x:.2f}' for x in load_end)}.",
        "",
        "In-process, at the `Gallery` level (no HTTP, no model), one query at a time; a real SQLite store file "
        "is the system of record, the Milvus kind is milvus-lite on a local `*.db` file (FLAT, inner product). "
        f"Synthetic clustered unit descriptors of dim {DIM}: {TRACKLETS} tracklets per identity, identities in "
        f"families of {FAMILY} (shared direction weight {FAMILY_WEIGHT}), {CAMERAS} camera biases (weight "
        f"{CAMERA_WEIGHT}), noise norm {NOISE}; {args.queries} queries = held-out tracklets of random gallery "
        "identities. *Import*: `store.put_many` in batches of 1000 (measured once per size, every kind indexes "
        "the same store) + the kind's index writes (`Gallery.add`, batches of 1000); items/s over both. "
        "*Start*: a new gallery from the existing store as at `sasreid serve` start (FAISS: every vector "
        "re-added from the store; Milvus: `reconcile`, counts and an id digest, nothing re-added), with the "
        "re-ranking graph (k = 30) loaded from the store where re-ranking is measured (its part in the next "
        "column). *Query*: `Gallery.search` top_k 10, 200 candidates, plain and re-ranked (`RerankParams()` "
        "k1 3, k2 1) alternating. *recall@10*: plain top-10 tracklets against an exact brute-force scan; "
        "*re-ranked agreement*: re-ranked top-10 against the flat gallery's re-ranked top-10; *rank-1*: the "
        "query's identity ranked first, plain / re-ranked. HNSW: M 32, efConstruction 200, efSearch 128.",
        "",
        "Re-ranking graph build (once per store, then saved in it and loaded by every kind): "
        + ("; ".join(graph_builds) if graph_builds else "not measured") + ".",
        "",
        "| items | kind | import s (store + index) | import items/s | start s | of which graph load s "
        "| plain p50 / p99 ms | re-ranked p50 / p99 ms | recall@10 | re-ranked agreement | rank-1 plain / re-ranked |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(row.cells() for row in rows),
        "",
        *(f"- {n}" for n in [*notes, *args.note]),
    ])


if __name__ == "__main__":
    raise SystemExit(main())
