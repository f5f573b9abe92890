"""The VReID-XFD challenge submission CSV.

Format (SPEC section 3)::

    row_id,case,query_tracklet,ranked_gallery_tracklets
    1,Case 1: Aerial to Ground,0024_5453,0031_0012 0024_7781 ...

One row per query of every case; cases in evaluation order (Case 1, 2, 3); within a case,
queries ordered by (identity folder, tracklet name) as the challenge's baseline script does;
``row_id`` counts from 1; ``ranked_gallery_tracklets`` is the case's whole gallery, best match
first, space-separated (the re-ranked order when re-ranking was run).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from model.engine.report import CaseReport, EvalReport

HEADER: tuple[str, ...] = ("row_id", "case", "query_tracklet", "ranked_gallery_tracklets")


def _query_order_key(case: CaseReport, i: int) -> tuple[tuple[int, int | str], str]:
    """(identity folder, tracklet name); numeric identities compare as numbers."""
    pid = case.query_pids[i] if i < len(case.query_pids) else ""
    return ((0, pid) if isinstance(pid, int) else (1, str(pid))), case.query_ids[i]


def submission_rows(report: EvalReport) -> list[tuple[int, str, str, str]]:
    """Rows of the CSV (see module docstring)."""
    rows: list[tuple[int, str, str, str]] = []
    for case in report.cases:
        if case.ranking is None or len(case.query_ids) != case.num_queries:
            raise ValueError(f"case {case.name}: no ranking to write (was the report produced by evaluate()?)")
        for qi in sorted(range(case.num_queries), key=lambda i, c=case: _query_order_key(c, i)):
            ranked = " ".join(case.gallery_ids[g] for g in case.ranking[qi])
            rows.append((len(rows) + 1, case.challenge_name, case.query_ids[qi], ranked))
    return rows


def write_submission(path: str | Path, report: EvalReport) -> int:
    """Write the submission CSV atomically; returns the number of data rows."""
    path = Path(path)
    rows = submission_rows(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    os.replace(tmp, path)
    return len(rows)
