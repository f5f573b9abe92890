"""``make demo``: the whole system end to end on SynthXFD, on one CPU machine.

1. generate SynthXFD (``sasreid synth``) into ``demo/synthxfd``;
2. train the small model (``sasreid train --config small``, the CPU preset, with ``DEMO_TRAIN_FLAGS``)
   into ``demo/run``;
3. for each challenge case, start ``sasreid serve`` on loopback with an embedded SQLite store
   (one gallery per case, as the protocol ranks each case's queries against its own gallery),
   enroll the case's gallery over HTTP and query every query tracklet over HTTP, with and
   without re-ranking;
4. compute mAP / CMC from the API's answers (with the cross-session split: clothing-changed
   positives, the headline, and same-outfit ones), print them beside ``sasreid evaluate`` on the
   same checkpoint and data, and write a CMC plot and a contact sheet of same-outfit queries with
   their top-5 answers.

While each case is served its web console URL is printed; on the first case the console is driven
in headless chromium (when installed) to search with a same-outfit query, and screenshots of the
search, identity and gallery pages are saved (``demo/console-search.png``, ``console-identity.png``,
``console-gallery.png``).
``--keep-serving`` serves the first case's gallery again at the end, until Ctrl-C, to browse it.

Every step reuses what an earlier run built (data, checkpoint, enrolled galleries).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from index.metrics import RankResult, evaluate_rank, session_junk_mask
from index.rerank import RerankParams
from model.data.detreidx import CaseSplit
from model.data.tracklet import Tracklet
from service.client import SasreidClient

DEMO_DIR = Path("demo")
# SynthXFD's tiny crops are mostly flat clothing colours, so for the demo (which shows same-outfit
# answers) each person-in-a-session is a training class and frames keep their colour: measured on
# SynthXFD, bench/RESULTS.md "The small recipe on SynthXFD". The real-image defaults are the
# other way round (person classes, per-frame standardisation).
DEMO_TRAIN_FLAGS = ("--train-identity", "outfit", "--input-norm", "dataset")
SHEET_ROWS_PER_CASE = 3  # same-outfit queries per case on the contact sheet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def ensure_data(root: Path) -> None:
    from service.cli import main as cli

    if (root / "manifest.csv").exists():
        print(f"SynthXFD already generated in {root} (delete it to regenerate)")
        return
    if cli(["synth", "--out", str(root)]) != 0:
        raise SystemExit("sasreid synth failed")


def ensure_checkpoint(data: Path, run: Path) -> Path:
    from service.cli import main as cli

    final = run / "final"
    if (final / "config.json").exists():
        print(f"trained checkpoint already in {final} (delete {run} to retrain)")
        return final
    if cli(["train", "--data", str(data), "--config", "small", *DEMO_TRAIN_FLAGS, "--out", str(run)]) != 0:
        raise SystemExit("sasreid train failed")
    return final


class Server:
    """``sasreid serve`` in a child process on a free loopback port."""

    def __init__(self, checkpoint: Path, store: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, SASREID_AUTH="off", OMP_WAIT_POLICY="PASSIVE")
        # --keep-frames: the console shows the gallery's pictures (a store enrolled by an older
        # demo run has none, and the console says so).
        cmd = [sys.executable, "-m", "service.cli", "serve", "--checkpoint", str(checkpoint),
               "--store", f"sqlite:///{store.resolve()}", "--host", "127.0.0.1", "--port", str(self.port),
               "--keep-frames"]
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> SasreidClient:
        client = SasreidClient(self.url, timeout=120.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"sasreid serve exited with code {self.proc.returncode}; see {self._log.name}")
            try:
                if client.ready():
                    return client
            except Exception:  # connection refused while starting
                pass
            time.sleep(0.2)
        raise SystemExit(f"sasreid serve was not ready after {timeout:.0f} s; see {self._log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def _frames(t: Tracklet) -> list[bytes]:
    return [p.read_bytes() for p in t.paths]


def enroll_gallery(client: SasreidClient, gallery: list[Tracklet], label: str) -> None:
    created = 0
    for t in tqdm(gallery, desc=f"{label} enroll", unit="tracklet"):
        res = client.enroll(_frames(t), identity=str(t.metadata.get("original_pid", t.pid)),
                            tracklet_id=t.tracklet_id, camera=str(t.camera), platform=t.platform,
                            session=None if t.session is None else str(t.session))
        created += int(res.created)
    print(f"{label}: {created} enrolled, {len(gallery) - created} already in the gallery")


@dataclass
class ApiRanking:
    """Per query: gallery tracklet ids ranked by the API's tracklet scores, and those scores."""

    ids: list[list[str]]
    scores: list[list[float]]


# Queries per POST /v1/query/batch: the server takes up to 32; 8 keeps each upload a few MB.
QUERY_BATCH = 8


def query_all(client: SasreidClient, queries: list[Tracklet], label: str, rerank: bool, top_k: int) -> ApiRanking:
    ids, scores = [], []
    with tqdm(total=len(queries), desc=f"{label} query{' +rerank' if rerank else ''}", unit="query") as bar:
        for start in range(0, len(queries), QUERY_BATCH):
            chunk = queries[start : start + QUERY_BATCH]
            answers = client.query_batch([{"frames": _frames(t), "top_k": top_k, "rerank": rerank} for t in chunk])
            for out in answers:
                hits = [(tr["score"], tr["tracklet_id"]) for r in out["results"] for tr in r["tracklets"]]
                hits.sort(key=lambda h: -h[0])  # stable: equal scores keep the API's order
                ids.append([h[1] for h in hits])
                scores.append([h[0] for h in hits])
            bar.update(len(chunk))
    return ApiRanking(ids, scores)


def api_distances(ranking: ApiRanking, gallery: list[Tracklet]) -> np.ndarray:
    """``[Q, G]`` distances from the API's answers: distance = -score; a gallery tracklet the API
    did not return ranks after every returned one."""
    index = {t.tracklet_id: j for j, t in enumerate(gallery)}
    dist = np.full((len(ranking.ids), len(gallery)), 1e9)
    for i, (tids, scores) in enumerate(zip(ranking.ids, ranking.scores)):
        for tid, score in zip(tids, scores):
            dist[i, index[tid]] = -score
    return dist


def metrics_from_api(ranking: ApiRanking, queries: list[Tracklet], gallery: list[Tracklet],
                     keep: str | None = None) -> RankResult:
    """The evaluation protocol on the API's answers; ``keep`` ("other-session" / "same-session")
    keeps only that kind of positive (``index.metrics.session_junk_mask``)."""
    labels = (np.array([t.pid for t in queries]), np.array([t.pid for t in gallery]),
              np.array([t.camera for t in queries]), np.array([t.camera for t in gallery]))
    junk = None
    if keep is not None:
        junk = session_junk_mask(labels[0], labels[1], [t.session for t in queries], [t.session for t in gallery], keep)
    return evaluate_rank(api_distances(ranking, gallery), *labels, junk=junk)


def same_outfit_queries(queries: list[Tracklet], gallery: list[Tracklet]) -> list[int]:
    """Indices of the queries with a positive in their own session (same clothes) in ``gallery``."""
    seen = {(t.pid, t.session) for t in gallery}
    return [i for i, q in enumerate(queries) if q.session is not None and (q.pid, q.session) in seen]


def top5_summary(rows: list[tuple[Tracklet, list[Tracklet]]], positives: list[int]) -> str:
    """What the contact sheet shows, in words: how often the right person is ranked first and
    found in the top 5, and how many of the answers are right out of how many could be
    (``positives[r]``: gallery tracklets of row ``r``'s identity; a row can be green at most
    ``min(5, positives[r])`` times)."""
    first = sum(bool(top) and top[0].pid == q.pid for q, top in rows)
    found = sum(any(g.pid == q.pid for g in top[:5]) for q, top in rows)
    correct = sum(g.pid == q.pid for q, top in rows for g in top[:5])
    possible = sum(min(5, n) for n in positives)
    return (f"the right person ranked first for {first} of {len(rows)} queries and within the top 5 for {found}; "
            f"{correct} of {5 * len(rows)} answers are the query's identity, of at most {possible} possible: "
            f"the gallery holds {min(positives, default=0)}-{max(positives, default=0)} tracklets per query identity")


def contact_sheet(rows: list[tuple[Tracklet, list[Tracklet]]], path: Path, cell: tuple[int, int] = (96, 48)) -> None:
    """One row per query: 4 query frames, a gap, then the top-5 gallery tracklets (first frame),
    green border = same identity, red = different."""
    h, w = cell
    pad, n_q, n_g = 6, 4, 5
    width = pad + n_q * (w + pad) + 3 * pad + n_g * (w + pad)
    sheet = Image.new("RGB", (width, pad + len(rows) * (h + 2 * pad) + 14), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), "query frames", fill=(0, 0, 0))
    draw.text((pad + n_q * (w + pad) + 3 * pad, 2), "top-5 gallery (green = correct)", fill=(0, 0, 0))
    for r, (q, top) in enumerate(rows):
        y = 14 + pad + r * (h + 2 * pad)
        idx = np.linspace(0, len(q.paths) - 1, n_q).round().astype(int)
        for c, i in enumerate(idx):
            with Image.open(q.paths[i]) as im:
                sheet.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (pad + c * (w + pad), y))
        x0 = pad + n_q * (w + pad) + 3 * pad
        for c, g in enumerate(top[:n_g]):
            x = x0 + c * (w + pad)
            ok = g.pid == q.pid
            draw.rectangle([x - 3, y - 3, x + w + 2, y + h + 2], outline=(0, 170, 0) if ok else (210, 0, 0), width=3)
            with Image.open(g.paths[len(g.paths) // 2]) as im:
                sheet.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (x, y))
    sheet.save(path)


def console_screenshots(url: str, query: Tracklet, out: Path) -> None:
    """Search the served gallery with ``query`` in the web console (headless chromium) and save
    screenshots of the search and identity pages in ``out``; says why when it cannot."""
    from service.ui.walkthrough import Console, headless_chromium, missing_browser, walkthrough

    reason = missing_browser()
    if reason is not None:
        print(f"console screenshots skipped: {reason}")
        return
    try:
        with headless_chromium() as driver:
            shots = walkthrough(Console(driver, url), None, list(query.paths), out)
    except Exception as exc:  # the screenshots illustrate; the demo's numbers do not depend on them
        print(f"console screenshots failed: {type(exc).__name__}: {exc}")
        return
    print(f"console screenshots: {shots.search_png} (query {query.tracklet_id}, first answer "
          f"{shots.ranked[0]}), {shots.identity_png}, {shots.gallery_png}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="SAS-VPReID end-to-end demo on SynthXFD")
    ap.add_argument("--dir", type=Path, default=DEMO_DIR, help="working folder (default ./demo)")
    ap.add_argument("--keep-serving", action="store_true",
                    help="at the end, serve the first case's gallery with its web console until Ctrl-C")
    args = ap.parse_args(argv)
    from model.engine.cmc_plot import plot_cmc
    from model.engine.datasets import load_reid_data
    from model.engine.evaluate import evaluate_checkpoint
    from model.engine.report import (
        CLOTHING_CHANGED,
        SAME_OUTFIT,
        CaseReport,
        EvalReport,
        RankMetrics,
        RankVariants,
    )

    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    data_root, run = work / "synthxfd", work / "run"
    _step("1/4 SynthXFD synthetic far-distance benchmark")
    ensure_data(data_root)
    _step("2/4 training the small SAS-VPReID model on CPU")
    ckpt = ensure_checkpoint(data_root, run)
    data = load_reid_data(data_root)

    _step("3/4 serving: enroll each case's gallery and query it over HTTP")
    (work / "gallery").mkdir(exist_ok=True)
    cases_plain, sheet_rows = [], []
    sheet_positives: list[int] = []
    for case in data.cases:
        server = Server(ckpt, work / "gallery" / f"{case.name}.db", work / "serve.log")
        try:
            client = server.wait_ready()
            print(f"{case.label}: sasreid serve ready at {server.url} "
                  f"(store sqlite:///{work / 'gallery' / (case.name + '.db')})")
            print(f"{case.label}: web console at {server.url}/ui while this case is served "
                  f"(no key: auth is off on the demo's loopback server)", flush=True)
            enroll_gallery(client, case.gallery, case.label)
            top_k = len({t.pid for t in case.gallery})
            plain = query_all(client, case.query, case.label, rerank=False, top_k=top_k)
            rr = query_all(client, case.query, case.label, rerank=True, top_k=top_k)
            if case is data.cases[0]:
                outfit = same_outfit_queries(case.query, case.gallery)
                console_screenshots(server.url, case.query[outfit[0] if outfit else 0], work)
        finally:
            server.stop()
        n = len(case.query)

        def variants(keep: str | None, n: int = n, case=case, plain=plain, rr=rr) -> RankVariants:
            return RankVariants(*(RankMetrics.from_result(metrics_from_api(r, case.query, case.gallery, keep), n)
                                  for r in (plain, rr)))

        std = variants(None)
        report = CaseReport(case.name, case.label, case.challenge_name, n, len(case.gallery), std.plain, std.reranked)
        if all(t.session is not None for t in (*case.query, *case.gallery)):
            report.positives = {CLOTHING_CHANGED: variants("other-session"), SAME_OUTFIT: variants("same-session")}
        cases_plain.append(report)
        by_id = {t.tracklet_id: t for t in case.gallery}
        for i in same_outfit_queries(case.query, case.gallery)[:SHEET_ROWS_PER_CASE]:
            sheet_rows.append((case.query[i], [by_id[tid] for tid in plain.ids[i][:5]]))
            sheet_positives.append(sum(g.pid == case.query[i].pid for g in case.gallery))
    api_report = EvalReport(cases_plain, rerank_params=RerankParams().to_dict(),  # the service's default
                            meta={"source": "HTTP API answers"})

    _step("4/4 results")
    print("From the API's answers (re-ranking: candidate-restricted k-reciprocal on the gallery graph):")
    print(api_report.format_table())
    offline = evaluate_checkpoint(data_root, ckpt, rerank=True, progress=False)
    print("\n`sasreid evaluate --rerank` on the same checkpoint and data (exact k-reciprocal over query+gallery):")
    print(offline.format_table())
    diffs = [abs(a.plain.mAP - b.plain.mAP) for a, b in zip(api_report.cases, offline.cases)]
    r1 = [abs(a.plain.cmc_at[1] - b.plain.cmc_at[1]) for a, b in zip(api_report.cases, offline.cases)]
    print(f"\nagreement without re-ranking (API vs evaluate): max |mAP diff| = {max(diffs):.4f}, "
          f"max |R1 diff| = {max(r1):.4f} (percentage points)")
    plot = plot_cmc(api_report, work / "cmc.png", title="SynthXFD CMC from the HTTP API (small model)")
    sheet = work / "top5.png"
    contact_sheet(sheet_rows, sheet)
    print(f"CMC plot: {plot}\ncontact sheet of {len(sheet_rows)} same-outfit queries and their top-5: {sheet} "
          f"({top5_summary(sheet_rows, sheet_positives)})")
    print(f"demo finished in {time.monotonic() - t_start:.0f} s")
    if args.keep_serving:
        keep_serving(ckpt, work, data.cases[0])
    return 0 if max(diffs) < 0.5 else 1


def keep_serving(ckpt: Path, work: Path, case: CaseSplit) -> None:
    """Serve one case's gallery (already enrolled) until Ctrl-C, for the web console."""
    server = Server(ckpt, work / "gallery" / f"{case.name}.db", work / "serve.log")
    try:
        server.wait_ready()
        print(f"\nweb console: {server.url}/ui (gallery of {case.label}; no key needed). "
              "Ctrl-C stops the server.", flush=True)
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
