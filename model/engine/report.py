"""Evaluation results: per-case metrics, mAP-3 both ways, JSON form and the printed table.

All metric values are percentages (as in the papers and fast-reid's reports); counts are ints.
mAP-3 is reported twice, each labelled: the unweighted mean of the case mAPs, and the
query-weighted (pooled) mean = sum of all valid queries' AP over all cases / their number.

Besides the standard market-1501 figures (``plain`` / ``reranked``, always there) a report may hold:

- ``positives``: the cross-session protocol, when a case's records carry sessions and both kinds
  of positive occur: "clothing-changed" (other-session positives only, the headline) and
  "same-outfit" (same-session positives only), each with the other kind as junk;
- ``scorer``: the VReID-XFD organisers' scorer (``index.metrics.evaluate_ranking_vreid_xfd``);
- ``branches``: each descriptor branch (v_i, h_M, f_S) evaluated alone, next to the fused descriptor.
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
STANDARD_DEFINITION = ("market-1501: every same-identity gallery item is a positive except those from the "
                       "query's camera (junk); non-interpolated AP")

CLOTHING_CHANGED = "clothing-changed"
SAME_OUTFIT = "same-outfit"
POSITIVE_KINDS: tuple[str, ...] = (CLOTHING_CHANGED, SAME_OUTFIT)  # headline first
KIND_DEFINITIONS: dict[str, str] = {
    CLOTHING_CHANGED: "positives in another session than the query only; same-session positives are junk",
    SAME_OUTFIT: "positives in the query's session (another camera/platform) only; other-session positives "
                 "are junk",
}

SCORER_LABEL = "VReID-XFD scorer"
SCORER_DEFINITION = ("the organisers' calculate_metrics_from_csv.py: identity = tracklet name before the first "
                     "'_', only the query's own tracklet is junk (same-camera positives count), trapezoidal AP "
                     "of market-1501's python compute_mAP")
SCORER_RANK1_LABEL = "mean Rank-1 over cases (the scorer's final score)"

BRANCH_LABELS: dict[str, str] = {"v": "v_i alone", "h": "h_M alone", "s": "f_S alone"}
FUSED = "fused"
BRANCH_DEFINITION = ("each branch's descriptor columns alone, L2-renormalised, cosine distance, no re-ranking; "
                     "fused = the full descriptor")


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

    def to_dict(self) -> dict[str, Any]:
        """JSON form: everything but the per-query APs, ``cmc_at`` keyed ``rank-R``."""
        d = asdict(self)
        d.pop("ap")
        d["cmc_at"] = {f"rank-{r}": v for r, v in self.cmc_at.items()}
        return d


@dataclass
class RankVariants:
    """One protocol's metrics of one case: cosine-distance ranking and, when run, re-ranked."""

    plain: RankMetrics
    reranked: RankMetrics | None = None

    def get(self, attr: str) -> RankMetrics | None:
        """``plain`` or ``reranked``."""
        return self.plain if attr == "plain" else self.reranked

    def to_dict(self) -> dict[str, Any]:
        return {k: m.to_dict() for k, m in (("plain", self.plain), ("reranked", self.reranked)) if m is not None}


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
    # Cross-session protocol, keyed by POSITIVE_KINDS; empty when sessions are unknown or one kind is absent.
    positives: dict[str, RankVariants] = field(default_factory=dict)
    scorer: RankVariants | None = None  # the VReID-XFD scorer, when asked for


@dataclass
class BranchReport:
    """One descriptor branch evaluated alone: columns ``start:stop`` of the descriptor."""

    name: str  # "v", "h", "s" (model.sasreid.DescriptorPart.name)
    start: int
    stop: int
    weight: float
    cases: list[RankMetrics]  # one per EvalReport case, same order

    @property
    def label(self) -> str:
        return BRANCH_LABELS.get(self.name, f"{self.name} alone")


def map_means(metrics: list[RankMetrics]) -> tuple[float, float]:
    """(unweighted mean of the case mAPs, pooled query-weighted mAP), both percent."""
    if not metrics:
        return float("nan"), float("nan")
    maps = [m.mAP for m in metrics]
    unweighted = float(np.mean(maps)) if not any(math.isnan(x) for x in maps) else float(np.nanmean(maps))
    valid = sum(m.num_valid_queries for m in metrics)
    pooled = float(sum(np.nansum(m.ap) for m in metrics) / valid * 100.0) if valid else float("nan")
    return unweighted, pooled


def _flat_rank(out: dict[str, float], prefix: str, m: RankMetrics, minp: bool = True) -> None:
    """Add ``prefix/mAP``, ``prefix/Rank-R``, [``prefix/mINP``], ``prefix/valid_queries``, ``prefix/queries``."""
    out[f"{prefix}/mAP"] = m.mAP
    for r in RANKS:
        out[f"{prefix}/Rank-{r}"] = m.cmc_at[r]
    if minp:
        out[f"{prefix}/mINP"] = m.mINP
    out[f"{prefix}/valid_queries"] = float(m.num_valid_queries)
    out[f"{prefix}/queries"] = float(m.num_queries)


def _rank_table(rows: list[tuple[str, str, int, int, RankMetrics]], minp: bool = True) -> list[str]:
    """Header and one line per ``(case label, rerank flag, queries, gallery, metrics)``."""
    head = f"{'case':6s} {'rerank':6s} {'queries':>7s} {'valid':>6s} {'gallery':>7s} {'mAP':>6s} " + " ".join(
        f"{'R' + str(r):>6s}" for r in RANKS) + (f" {'mINP':>6s}" if minp else "")
    lines = [head, "-" * len(head)]
    for label, flag, nq, ng, m in rows:
        lines.append(f"{label:6s} {flag:6s} {nq:7d} {m.num_valid_queries:6d} {ng:7d} {m.mAP:6.2f} "
                     + " ".join(f"{m.cmc_at[r]:6.2f}" for r in RANKS) + (f" {m.mINP:6.2f}" if minp else ""))
    return lines


def _means_dict(means: tuple[float, float]) -> dict[str, float]:
    return {MEAN_LABEL: means[0], POOLED_LABEL: means[1]}


@dataclass
class EvalReport:
    """All cases of one evaluation plus where the descriptors came from."""

    cases: list[CaseReport]
    rerank_params: dict[str, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    branches: list[BranchReport] = field(default_factory=list)  # empty for a single-branch descriptor
    camera_centring: bool = False  # descriptors centred per camera before ranking (ReIDEvaluator)

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

    def _variants(self) -> list[tuple[str, str]]:
        """(attribute, key suffix) of the ranking variants this report has."""
        return [("plain", "")] + ([("reranked", " +rerank")] if self.map3_reranked else [])

    # -- cross-session protocol ------------------------------------------------------------
    def kind_cases(self, kind: str) -> list[CaseReport]:
        """The cases that report positives of ``kind`` (one of POSITIVE_KINDS)."""
        return [c for c in self.cases if kind in c.positives]

    @property
    def has_cross_session(self) -> bool:
        return any(c.positives for c in self.cases)

    def kind_means(self, kind: str, attr: str = "plain") -> tuple[str, tuple[float, float]] | None:
        """(name such as ``mAP-3``, (unweighted, pooled)) of ``kind`` over the cases that have it."""
        metrics = [c.positives[kind].get(attr) for c in self.kind_cases(kind)]
        if not metrics or any(m is None for m in metrics):
            return None
        return f"mAP-{len(metrics)}", map_means([m for m in metrics if m is not None])

    # -- VReID-XFD scorer ------------------------------------------------------------------
    @property
    def has_scorer(self) -> bool:
        return bool(self.cases) and all(c.scorer is not None for c in self.cases)

    def scorer_metrics(self, attr: str = "plain") -> list[RankMetrics] | None:
        """The scorer's metrics of every case for ``attr`` (None when not run)."""
        if not self.has_scorer:
            return None
        metrics = [c.scorer.get(attr) for c in self.cases if c.scorer is not None]
        return None if any(m is None for m in metrics) else [m for m in metrics if m is not None]

    # -- output ----------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Flat ``{name: value}`` (fast-reid style), e.g. ``A->G/mAP``, ``mAP-3 (pooled)``, and, when
        present, ``clothing-changed/A->G/mAP``, ``VReID-XFD scorer/A->G/mAP``, ``branch v/A->G/mAP``."""
        out: dict[str, float] = {}
        for attr, suffix in self._variants():
            for c in self.cases:
                _flat_rank(out, f"{c.label}{suffix}", getattr(c, attr))
            mean, pooled = self.map3 if attr == "plain" else self.map3_reranked  # type: ignore[misc]
            out[f"{self.mean_name}{suffix} ({MEAN_LABEL})"] = mean
            out[f"{self.mean_name}{suffix} ({POOLED_LABEL})"] = pooled
            for kind in POSITIVE_KINDS:
                km = self.kind_means(kind, attr)
                if km is None:
                    continue
                for c in self.kind_cases(kind):
                    _flat_rank(out, f"{kind}/{c.label}{suffix}", c.positives[kind].get(attr))  # type: ignore[arg-type]
                out[f"{kind} {km[0]}{suffix} ({MEAN_LABEL})"] = km[1][0]
                out[f"{kind} {km[0]}{suffix} ({POOLED_LABEL})"] = km[1][1]
            scorer = self.scorer_metrics(attr)
            if scorer is not None:
                for c, m in zip(self.cases, scorer):
                    _flat_rank(out, f"{SCORER_LABEL}/{c.label}{suffix}", m, minp=False)
                s_mean, s_pooled = map_means(scorer)
                out[f"{SCORER_LABEL} {self.mean_name}{suffix} ({MEAN_LABEL})"] = s_mean
                out[f"{SCORER_LABEL} {self.mean_name}{suffix} ({POOLED_LABEL})"] = s_pooled
                out[f"{SCORER_LABEL}{suffix} {SCORER_RANK1_LABEL}"] = float(np.mean([m.cmc_at[1] for m in scorer]))
        for b in self.branches:
            for c, m in zip(self.cases, b.cases):
                out[f"branch {b.name}/{c.label}/mAP"] = m.mAP
                out[f"branch {b.name}/{c.label}/Rank-1"] = m.cmc_at[1]
            b_mean, b_pooled = map_means(b.cases)
            out[f"branch {b.name}/{self.mean_name} ({MEAN_LABEL})"] = b_mean
            out[f"branch {b.name}/{self.mean_name} ({POOLED_LABEL})"] = b_pooled
        return out

    def _cross_session_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"headline": CLOTHING_CHANGED, "definitions": dict(KIND_DEFINITIONS)}
        for kind in POSITIVE_KINDS:
            block: dict[str, Any] = {"cases": [c.label for c in self.kind_cases(kind)]}
            for attr, suffix in self._variants():
                km = self.kind_means(kind, attr)
                if km is not None:
                    block[f"{km[0]}{suffix}"] = _means_dict(km[1])
            out[kind] = block
        return out

    def _scorer_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"definition": SCORER_DEFINITION}
        for attr, suffix in self._variants():
            scorer = self.scorer_metrics(attr)
            if scorer is not None:
                out[f"{self.mean_name}{suffix}"] = _means_dict(map_means(scorer))
                out[f"{SCORER_RANK1_LABEL}{suffix}"] = float(np.mean([m.cmc_at[1] for m in scorer]))
        return out

    def _branches_dict(self) -> dict[str, Any]:
        def entry(label: str, metrics: list[RankMetrics], **extra: Any) -> dict[str, Any]:
            return {"label": label, **extra,
                    "cases": {c.label: {"mAP": m.mAP, "rank-1": m.cmc_at[1], "valid_queries": m.num_valid_queries}
                              for c, m in zip(self.cases, metrics)},
                    self.mean_name: _means_dict(map_means(metrics))}

        out: dict[str, Any] = {"definition": BRANCH_DEFINITION}
        for b in self.branches:
            out[b.name] = entry(b.label, b.cases, columns=[b.start, b.stop], weight=b.weight)
        out[FUSED] = entry(FUSED, [c.plain for c in self.cases])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (rankings and per-query APs left out); the cross-session block, when there
        is one, comes first (its clothing-changed figure is the headline)."""
        def case_dict(c: CaseReport) -> dict[str, Any]:
            d = {k: getattr(c, k) for k in ("name", "label", "challenge_name", "num_queries", "num_gallery")}
            for attr in ("plain", "reranked"):
                m = getattr(c, attr)
                if m is not None:
                    d[attr] = m.to_dict()
            if c.positives:
                d["positives"] = {kind: c.positives[kind].to_dict() for kind in POSITIVE_KINDS if kind in c.positives}
            if c.scorer is not None:
                d[SCORER_LABEL] = c.scorer.to_dict()
            return d

        out: dict[str, Any] = {}
        if self.has_cross_session:
            out["cross_session"] = self._cross_session_dict()
        out["protocol"] = STANDARD_DEFINITION
        out["cases"] = [case_dict(c) for c in self.cases]
        out[self.mean_name] = _means_dict(self.map3)
        out["rerank_params"] = self.rerank_params
        out["camera_centring"] = self.camera_centring
        out["meta"] = self.meta
        rr = self.map3_reranked
        if rr is not None:
            out[f"{self.mean_name} +rerank"] = _means_dict(rr)
        if self.has_scorer:
            out[SCORER_LABEL] = self._scorer_dict()
        if self.branches:
            out["branches"] = self._branches_dict()
        return out

    def _cross_session_lines(self) -> list[str]:
        lines: list[str] = []
        for i, kind in enumerate(POSITIVE_KINDS):
            cases = self.kind_cases(kind)
            if not cases:
                continue
            head = "HEADLINE " if i == 0 else ""
            lines.append(f"{head}cross-session protocol, {kind} ({KIND_DEFINITIONS[kind]}):")
            rows = [(c.label, flag, c.num_queries, c.num_gallery, c.positives[kind].get(attr))
                    for attr, flag in (("plain", "no"), ("reranked", "yes")) for c in cases
                    if c.positives[kind].get(attr) is not None]
            lines += _rank_table(rows)  # type: ignore[arg-type]
            for attr, suffix in self._variants():
                km = self.kind_means(kind, attr)
                if km is not None:
                    over = ", ".join(c.label for c in cases)
                    lines.append(f"{kind} {km[0]}{suffix} ({MEAN_LABEL}, over {over}): {km[1][0]:6.2f}")
                    lines.append(f"{kind} {km[0]}{suffix} ({POOLED_LABEL}, over {over}): {km[1][1]:6.2f}")
            lines.append("")
        return lines

    def _scorer_lines(self) -> list[str]:
        lines = ["", f"{SCORER_LABEL} ({SCORER_DEFINITION}):"]
        rows = []
        for attr, flag in (("plain", "no"), ("reranked", "yes")):
            scorer = self.scorer_metrics(attr)
            if scorer is not None:
                rows += [(c.label, flag, c.num_queries, c.num_gallery, m) for c, m in zip(self.cases, scorer)]
        lines += _rank_table(rows, minp=False)
        for attr, suffix in self._variants():
            scorer = self.scorer_metrics(attr)
            if scorer is not None:
                mean, pooled = map_means(scorer)
                lines.append(f"{SCORER_LABEL} {self.mean_name}{suffix} ({MEAN_LABEL}): {mean:6.2f}")
                lines.append(f"{SCORER_LABEL} {self.mean_name}{suffix} ({POOLED_LABEL}): {pooled:6.2f}")
                lines.append(f"{SCORER_LABEL}{suffix} {SCORER_RANK1_LABEL}: "
                             f"{np.mean([m.cmc_at[1] for m in scorer]):6.2f}")
        return lines

    def _branch_lines(self) -> list[str]:
        head = f"{'branch':10s} " + " ".join(f"{c.label + ' mAP':>10s}" for c in self.cases) + (
            f" {self.mean_name + ' unweighted':>18s} {self.mean_name + ' pooled':>14s}")
        lines = ["", f"branches ({BRANCH_DEFINITION}):", head, "-" * len(head)]
        rows = [(b.label, b.cases) for b in self.branches] + [(FUSED, [c.plain for c in self.cases])]
        for label, metrics in rows:
            mean, pooled = map_means(metrics)
            lines.append(f"{label:10s} " + " ".join(f"{m.mAP:10.2f}" for m in metrics)
                         + f" {mean:18.2f} {pooled:14.2f}")
        return lines

    def format_table(self) -> str:
        """The human-readable table: the cross-session protocol first when there is one (clothing-changed
        is its headline), then one row per case and ranking variant under the standard protocol with the
        mAP-3 lines, then the VReID-XFD scorer's and the per-branch figures when present."""
        lines = self._cross_session_lines()
        if lines:
            lines.append(f"standard protocol, all positives ({STANDARD_DEFINITION}):")
        variants = [("plain", "no")] + ([("reranked", "yes")] if self.map3_reranked else [])
        lines += _rank_table([(c.label, flag, c.num_queries, c.num_gallery, getattr(c, attr))
                              for attr, flag in variants for c in self.cases])
        lines.append("")
        for attr, suffix in self._variants():
            mean, pooled = self.map3 if attr == "plain" else self.map3_reranked  # type: ignore[misc]
            lines.append(f"{self.mean_name}{suffix} ({MEAN_LABEL}): {mean:6.2f}")
            lines.append(f"{self.mean_name}{suffix} ({POOLED_LABEL}): {pooled:6.2f}")
        if self.has_scorer:
            lines += self._scorer_lines()
        if self.branches:
            lines += self._branch_lines()
        if self.camera_centring:
            lines.append("camera-wise centring: each camera's mean descriptor removed in the query and gallery sets")
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
