"""Evaluation results: per-case metrics, mAP-3 both ways, JSON form and the printed table.

All metric values are percentages (as in the papers and fast-reid's reports); counts are ints.
mAP-3 is reported twice, each labelled: the unweighted mean of the case mAPs, and the
query-weighted (pooled) mean = sum of all valid queries' AP over all cases / their number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from index.metrics import RankResult

RANKS: tuple[int, ...] = (1, 5, 10, 20)
MEAN_LABEL = "unweighted mean of case mAPs"
POOLED_LABEL = "query-weighted (pooled) mean"


@dataclass
class RankMetrics:
    """One ranking of one case: mAP, CMC at ``RANKS``, mINP (percent) and query counts."""

    mAP: float
    cmc_at: dict[int, float]
    mINP: float
    num_valid_queries: int
    num_queries: int
    cmc: list[float] = field(repr=False)  # CMC curve, percent, ranks 1..max_rank
    ap: list[float] = field(repr=False)  # per-query AP in [0, 1], NaN for skipped queries

    @staticmethod
    def from_result(result: RankResult, num_queries: int) -> RankMetrics:
        cmc = (np.asarray(result.cmc, dtype=np.float64) * 100.0).tolist()
        at = {r: cmc[min(r, len(cmc)) - 1] if cmc else float("nan") for r in RANKS}
        return RankMetrics(
            mAP=float(result.mAP) * 100.0,
            cmc_at=at,
            mINP=float(result.mINP) * 100.0,
            num_valid_queries=int(result.num_valid_queries),
            num_queries=num_queries,
            cmc=cmc,
            ap=[float(x) for x in np.asarray(result.ap, dtype=np.float64)],
        )


@dataclass
class CaseReport:
    """One evaluation case, ranked by cosine distance and optionally after k-reciprocal re-ranking."""

    name: str
    label: str
    challenge_name: str
    num_queries: int
    num_gallery: int
    plain: RankMetrics
    reranked: RankMetrics | None = None
    query_ids: list[str] = field(default_factory=list, repr=False)
    query_pids: list[int | str] = field(default_factory=list, repr=False)  # on-disk identity of each query
    gallery_ids: list[str] = field(default_factory=list, repr=False)
    # Full gallery ranking per query (indices into gallery_ids): re-ranked when available.
    ranking: np.ndarray | None = field(default=None, repr=False)


def map_means(metrics: list[RankMetrics]) -> tuple[float, float]:
    """(unweighted mean of the case mAPs, pooled query-weighted mAP), both percent."""
    if not metrics:
        return float("nan"), float("nan")
    maps = [m.mAP for m in metrics]
    unweighted = float(np.mean(maps)) if not any(math.isnan(x) for x in maps) else float(np.nanmean(maps))
    valid = sum(m.num_valid_queries for m in metrics)
    pooled = float(sum(np.nansum(m.ap) for m in metrics) / valid * 100.0) if valid else float("nan")
    return unweighted, pooled


@dataclass
class EvalReport:
    """All cases of one evaluation plus where the descriptors came from."""

    cases: list[CaseReport]
    rerank_params: dict[str, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def map3(self) -> tuple[float, float]:
        """(unweighted mean, pooled) mAP over the cases without re-ranking."""
        return map_means([c.plain for c in self.cases])

    @property
    def map3_reranked(self) -> tuple[float, float] | None:
        if any(c.reranked is None for c in self.cases) or not self.cases:
            return None
        return map_means([c.reranked for c in self.cases if c.reranked is not None])

    @property
    def mean_name(self) -> str:
        """``mAP-3`` for the three challenge cases, else a generic name."""
        return "mAP-3" if len(self.cases) == 3 else f"mAP-{len(self.cases)}"

    def metrics(self) -> dict[str, float]:
        """Flat ``{name: value}`` (fast-reid style), e.g. ``A->G/mAP``, ``mAP-3 (pooled)``."""
        out: dict[str, float] = {}
        variants: list[tuple[str, str]] = [("plain", "")] + ([("reranked", " +rerank")] if self.map3_reranked else [])
        for attr, suffix in variants:
            for c in self.cases:
                m: RankMetrics = getattr(c, attr)
                out[f"{c.label}{suffix}/mAP"] = m.mAP
                for r in RANKS:
                    out[f"{c.label}{suffix}/Rank-{r}"] = m.cmc_at[r]
                out[f"{c.label}{suffix}/mINP"] = m.mINP
                out[f"{c.label}{suffix}/valid_queries"] = float(m.num_valid_queries)
                out[f"{c.label}{suffix}/queries"] = float(m.num_queries)
            mean, pooled = self.map3 if attr == "plain" else self.map3_reranked  # type: ignore[misc]
            out[f"{self.mean_name}{suffix} ({MEAN_LABEL})"] = mean
            out[f"{self.mean_name}{suffix} ({POOLED_LABEL})"] = pooled
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (rankings and per-query APs left out)."""
        def case_dict(c: CaseReport) -> dict[str, Any]:
            d = {k: getattr(c, k) for k in ("name", "label", "challenge_name", "num_queries", "num_gallery")}
            for attr in ("plain", "reranked"):
                m = getattr(c, attr)
                if m is not None:
                    md = asdict(m)
                    md.pop("ap")
                    md["cmc_at"] = {f"rank-{r}": v for r, v in m.cmc_at.items()}
                    d[attr] = md
            return d

        mean, pooled = self.map3
        out: dict[str, Any] = {
            "cases": [case_dict(c) for c in self.cases],
            self.mean_name: {MEAN_LABEL: mean, POOLED_LABEL: pooled},
            "rerank_params": self.rerank_params,
            "meta": self.meta,
        }
        rr = self.map3_reranked
        if rr is not None:
            out[f"{self.mean_name} +rerank"] = {MEAN_LABEL: rr[0], POOLED_LABEL: rr[1]}
        return out

    def format_table(self) -> str:
        """The human-readable table: one row per case and ranking variant, then the mAP-3 lines."""
        head = f"{'case':6s} {'rerank':6s} {'queries':>7s} {'valid':>6s} {'gallery':>7s} {'mAP':>6s} " + " ".join(
            f"{'R' + str(r):>6s}" for r in RANKS) + f" {'mINP':>6s}"
        lines = [head, "-" * len(head)]
        variants = [("plain", "no")] + ([("reranked", "yes")] if self.map3_reranked else [])
        for attr, flag in variants:
            for c in self.cases:
                m: RankMetrics = getattr(c, attr)
                lines.append(
                    f"{c.label:6s} {flag:6s} {c.num_queries:7d} {m.num_valid_queries:6d} {c.num_gallery:7d} "
                    f"{m.mAP:6.2f} " + " ".join(f"{m.cmc_at[r]:6.2f}" for r in RANKS) + f" {m.mINP:6.2f}"
                )
        lines.append("")
        for attr, _flag in variants:
            mean, pooled = self.map3 if attr == "plain" else self.map3_reranked  # type: ignore[misc]
            rr = " +rerank" if attr == "reranked" else ""
            lines.append(f"{self.mean_name}{rr} ({MEAN_LABEL}): {mean:6.2f}")
            lines.append(f"{self.mean_name}{rr} ({POOLED_LABEL}): {pooled:6.2f}")
        if self.rerank_params:
            p = self.rerank_params
            lines.append(f"re-ranking: k-reciprocal k1={p['k1']:g} k2={p['k2']:g} lambda={p['lambda']:g}")
        return "\n".join(lines)


def markdown_table(named: list[tuple[str, EvalReport]]) -> str:
    """A markdown table comparing reports: per-case mAP / R1 and both mAP-3 means, one row per
    (name, ranking variant)."""
    if not named:
        return ""
    labels = [c.label for c in named[0][1].cases]
    mean_name = named[0][1].mean_name
    head = (["model", "re-rank"] + [f"{lb} mAP / R1" for lb in labels]
            + [f"{mean_name} unweighted", f"{mean_name} pooled"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---:"] + ["---:"] * (len(head) - 2)) + "|"]
    for name, report in named:
        variants = [("plain", "no", report.map3)]
        if report.map3_reranked is not None:
            variants.append(("reranked", "yes", report.map3_reranked))
        for attr, flag, (mean, pooled) in variants:
            cells = [name, flag]
            for c in report.cases:
                m: RankMetrics = getattr(c, attr)
                cells.append(f"{m.mAP:.2f} / {m.cmc_at[1]:.2f}")
            cells += [f"{mean:.2f}", f"{pooled:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
