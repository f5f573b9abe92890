"""Re-identification evaluator with fast-reid's protocol: ``reset()``, ``process()``, ``evaluate()``.

``process(descriptors, records)`` collects descriptors of any tracklet records (in any order and
any number of calls); ``evaluate()`` ranks every case's queries against its gallery:

- distance = cosine distance ``1 - <q, g>`` of L2-normalised descriptors (the evaluator
  normalises, so raw features of a baseline work too);
- optional k-reciprocal re-ranking (``index.rerank.k_reciprocal``; its original distance is the
  squared Euclidean distance of the unit descriptors, ``2 - 2 cos``, the same order);
- metrics by ``index.metrics.evaluate_rank``: a gallery item with the query's identity and camera
  is junk; camera ids come from the records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from index.metrics import evaluate_rank
from index.rerank import k_reciprocal
from model.data import Tracklet
from model.engine.datasets import EvalCase, tracklet_key
from model.engine.report import CaseReport, EvalReport, RankMetrics


@dataclass(frozen=True)
class RerankParams:
    """k-reciprocal re-ranking parameters (Zhong et al. 2017 defaults)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def to_dict(self) -> dict[str, float]:
        return {"k1": self.k1, "k2": self.k2, "lambda": self.lambda_value}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x [N, D]`` scaled to unit norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_distance(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """``1 - qf @ gf.T`` for unit rows: ``[Q, D] x [G, D] -> [Q, G]`` float32."""
    return (1.0 - qf @ gf.T).astype(np.float32)


def stable_ranking(dist: np.ndarray) -> np.ndarray:
    """Gallery indices of each row by ascending distance, ties by gallery index: ``[Q, G]``."""
    return np.argsort(dist, axis=1, kind="stable")


def _labels(records: Sequence[Tracklet]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([t.pid for t in records], dtype=np.int64), np.array([t.camera for t in records], dtype=np.int64)


class ReIDEvaluator:
    """Evaluates descriptors on a list of cases (see the module docstring)."""

    def __init__(self, cases: Sequence[EvalCase], rerank: RerankParams | None = None, max_rank: int = 50) -> None:
        if not cases:
            raise ValueError("the evaluator needs at least one case")
        self.cases = list(cases)
        self.rerank = rerank
        self.max_rank = max_rank
        self.report: EvalReport | None = None
        self._desc: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        """Forget every descriptor collected so far (and the last report)."""
        self._desc = {}
        self.report = None

    def process(self, descriptors: np.ndarray | torch.Tensor, records: Sequence[Tracklet]) -> None:
        """Collect ``descriptors [N, D]`` of ``records`` (N tracklets, same order)."""
        d = descriptors.detach().float().cpu().numpy() if isinstance(descriptors, torch.Tensor) else np.asarray(descriptors)
        if d.ndim != 2 or d.shape[0] != len(records):
            raise ValueError(f"descriptors must be [N, D] with N = {len(records)} records, got shape {d.shape}")
        if not np.isfinite(d).all():
            raise ValueError("descriptors contain NaN or inf")
        for row, t in zip(d, records):
            self._desc[tracklet_key(t)] = row

    def _features(self, records: Sequence[Tracklet], what: str) -> np.ndarray:
        missing = [tracklet_key(t) for t in records if tracklet_key(t) not in self._desc]
        if missing:
            raise ValueError(f"{len(missing)} {what} tracklet(s) were never processed, e.g. {missing[0]}")
        return l2_normalise(np.stack([self._desc[tracklet_key(t)] for t in records]))

    def _evaluate_case(self, case: EvalCase) -> CaseReport:
        qf, gf = self._features(case.query, f"{case.label} query"), self._features(case.gallery, f"{case.label} gallery")
        q_pids, q_cams = _labels(case.query)
        g_pids, g_cams = _labels(case.gallery)
        dist = cosine_distance(qf, gf)
        plain = RankMetrics.from_result(evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, self.max_rank), len(qf))
        report = CaseReport(case.name, case.label, case.challenge_name, len(qf), len(gf), plain,
                            query_ids=[t.tracklet_id for t in case.query],
                            query_pids=[t.metadata.get("original_pid", t.pid) for t in case.query],
                            gallery_ids=[t.tracklet_id for t in case.gallery])
        if self.rerank is not None:
            p = self.rerank
            dist = np.asarray(k_reciprocal(qf, gf, k1=p.k1, k2=p.k2, lambda_value=p.lambda_value), dtype=np.float32)
            rr = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, self.max_rank)
            report.reranked = RankMetrics.from_result(rr, len(qf))
        report.ranking = stable_ranking(dist)
        return report

    def evaluate(self) -> dict[str, float]:
        """Rank every case; returns the flat metrics dict and keeps the full report in ``self.report``."""
        self.report = EvalReport(
            cases=[self._evaluate_case(c) for c in self.cases],
            rerank_params=self.rerank.to_dict() if self.rerank is not None else None,
        )
        return self.report.metrics()
