"""Re-identification evaluator with fast-reid's protocol: ``reset()``, ``process()``, ``evaluate()``.

``process(descriptors, records)`` collects descriptors of any tracklet records (in any order and
any number of calls); ``evaluate()`` ranks every case's queries against its gallery:

- distance = cosine distance ``1 - <q, g>`` of L2-normalised descriptors (the evaluator
  normalises, so raw features of a baseline work too);
- optional k-reciprocal re-ranking (``index.rerank.k_reciprocal``; its original distance is the
  squared Euclidean distance of the unit descriptors, ``2 - 2 cos``, the same order);
- metrics by ``index.metrics.evaluate_rank``: a gallery item with the query's identity and camera
  is junk; camera ids come from the records;
- cross-session protocol, when every record of a case has a session and both kinds of positive
  occur: "clothing-changed" ranks with the same-session positives as junk, "same-outfit" with the
  other-session positives as junk (``index.metrics.session_junk_mask``), with and without re-ranking;
- optionally the VReID-XFD organisers' scorer (``index.metrics.evaluate_ranking_vreid_xfd``) on the
  same rankings the submission CSV would hold;
- optionally camera-wise centring (``camera_centring``; ``index.camera_centring``): within the
  query set and within the gallery set, each camera's mean unit descriptor is subtracted before
  ranking, a transductive step that uses the unlabelled test tracklets of each camera;
- optionally each descriptor branch alone (``branches``: column ranges of the stored descriptor,
  L2-renormalised; cosine distance only, since re-ranking per branch would triple its cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from index.camera_centring import centre_by_camera
from index.metrics import evaluate_rank, evaluate_ranking_vreid_xfd, session_junk_mask
from index.rerank import RerankParams, k_reciprocal
from model.data import Tracklet
from model.engine.datasets import EvalCase, tracklet_key
from model.engine.report import (
    CLOTHING_CHANGED,
    SAME_OUTFIT,
    BranchReport,
    CaseReport,
    EvalReport,
    RankMetrics,
    RankVariants,
)
from model.sasreid import DescriptorPart

# The session kept as positives by each kind of positive (index.metrics.session_junk_mask's ``keep``).
_KIND_KEEPS: dict[str, str] = {CLOTHING_CHANGED: "other-session", SAME_OUTFIT: "same-session"}


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


def sessions_known(case: EvalCase) -> bool:
    """True when every query and gallery record of ``case`` has a session."""
    return all(t.session is not None for t in (*case.query, *case.gallery))


class ReIDEvaluator:
    """Evaluates descriptors on a list of cases (see the module docstring).

    ``leaderboard``: also score with the VReID-XFD organisers' scorer (tracklet names must parse as
    ``<pid>_<tracklet>``). ``branches``: descriptor parts to evaluate alone (ignored unless there
    are at least two). ``camera_centring``: centre query and gallery descriptors per camera (see the
    module docstring).
    """

    def __init__(self, cases: Sequence[EvalCase], rerank: RerankParams | None = None, max_rank: int = 50,
                 leaderboard: bool = False, branches: Sequence[DescriptorPart] = (),
                 camera_centring: bool = False) -> None:
        if not cases:
            raise ValueError("the evaluator needs at least one case")
        self.cases = list(cases)
        self.rerank = rerank
        self.max_rank = max_rank
        self.leaderboard = leaderboard
        self.branches = list(branches) if len(branches) > 1 else []
        self.camera_centring = camera_centring
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

    def _raw(self, records: Sequence[Tracklet], what: str) -> np.ndarray:
        """The collected descriptors of ``records`` as given to ``process``: ``[N, D]``."""
        missing = [tracklet_key(t) for t in records if tracklet_key(t) not in self._desc]
        if missing:
            raise ValueError(f"{len(missing)} {what} tracklet(s) were never processed, e.g. {missing[0]}")
        return np.stack([self._desc[tracklet_key(t)] for t in records])

    def _unit(self, raw: np.ndarray, records: Sequence[Tracklet]) -> np.ndarray:
        """Unit rows of ``raw [N, D]`` (descriptors of ``records``), camera-centred if asked."""
        if self.camera_centring:
            return centre_by_camera(raw, [(t.platform, t.camera) for t in records])
        return l2_normalise(raw)

    def _features(self, records: Sequence[Tracklet], what: str) -> np.ndarray:
        return self._unit(self._raw(records, what), records)

    def _positive_kinds(self, case: EvalCase, dists: list[np.ndarray]) -> dict[str, RankVariants]:
        """The cross-session protocol of ``case`` for the distance matrices ``dists`` ([plain] or
        [plain, re-ranked]); empty unless sessions are known and both kinds have a valid query."""
        if not sessions_known(case):
            return {}
        q_pids, q_cams = _labels(case.query)
        g_pids, g_cams = _labels(case.gallery)
        q_ses, g_ses = [t.session for t in case.query], [t.session for t in case.gallery]
        out: dict[str, RankVariants] = {}
        for kind, keep in _KIND_KEEPS.items():
            junk = session_junk_mask(q_pids, g_pids, q_ses, g_ses, keep)
            res = [evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, self.max_rank, junk=junk) for d in dists]
            if res[0].num_valid_queries == 0:
                return {}  # one kind is absent: the split adds nothing to the standard figure
            metrics = [RankMetrics.from_result(r, len(case.query)) for r in res]
            out[kind] = RankVariants(metrics[0], metrics[1] if len(metrics) > 1 else None)
        return out

    def _scorer(self, case: EvalCase, dists: list[np.ndarray]) -> RankVariants:
        """The VReID-XFD scorer on the stable rankings of ``dists`` (what the submission CSV holds)."""
        q_names, g_names = [t.tracklet_id for t in case.query], [t.tracklet_id for t in case.gallery]
        metrics = [RankMetrics.from_result(
            evaluate_ranking_vreid_xfd(stable_ranking(d), q_names, g_names, self.max_rank), len(q_names))
            for d in dists]
        return RankVariants(metrics[0], metrics[1] if len(metrics) > 1 else None)

    def _evaluate_case(self, case: EvalCase) -> CaseReport:
        qf, gf = self._features(case.query, f"{case.label} query"), self._features(case.gallery, f"{case.label} gallery")
        q_pids, q_cams = _labels(case.query)
        g_pids, g_cams = _labels(case.gallery)
        dists = [cosine_distance(qf, gf)]
        if self.rerank is not None:
            p = self.rerank
            dists.append(np.asarray(k_reciprocal(qf, gf, k1=p.k1, k2=p.k2, lambda_value=p.lambda_value),
                                    dtype=np.float32))
        std = [RankMetrics.from_result(evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, self.max_rank), len(qf))
               for d in dists]
        report = CaseReport(case.name, case.label, case.challenge_name, len(qf), len(gf), std[0],
                            std[1] if len(std) > 1 else None,
                            query_ids=[t.tracklet_id for t in case.query],
                            query_pids=[t.metadata.get("original_pid", t.pid) for t in case.query],
                            gallery_ids=[t.tracklet_id for t in case.gallery],
                            positives=self._positive_kinds(case, dists))
        if self.leaderboard:
            report.scorer = self._scorer(case, dists)
        report.ranking = stable_ranking(dists[-1])
        return report

    def _evaluate_branch(self, part: DescriptorPart) -> BranchReport:
        """Every case ranked by the columns ``part.start:part.stop`` alone (renormalised), no re-ranking."""
        metrics = []
        for case in self.cases:
            raw_q = self._raw(case.query, f"{case.label} query")
            raw_g = self._raw(case.gallery, f"{case.label} gallery")
            if part.stop > raw_q.shape[1]:
                raise ValueError(f"branch {part.name!r} spans columns {part.start}:{part.stop} but the "
                                 f"descriptors have {raw_q.shape[1]}")
            qf = self._unit(raw_q[:, part.start:part.stop], case.query)
            gf = self._unit(raw_g[:, part.start:part.stop], case.gallery)
            q_pids, q_cams = _labels(case.query)
            g_pids, g_cams = _labels(case.gallery)
            res = evaluate_rank(cosine_distance(qf, gf), q_pids, g_pids, q_cams, g_cams, self.max_rank)
            metrics.append(RankMetrics.from_result(res, len(qf)))
        return BranchReport(part.name, part.start, part.stop, part.weight, metrics)

    def evaluate(self) -> dict[str, float]:
        """Rank every case; returns the flat metrics dict and keeps the full report in ``self.report``."""
        self.report = EvalReport(
            cases=[self._evaluate_case(c) for c in self.cases],
            rerank_params=self.rerank.to_dict() if self.rerank is not None else None,
            branches=[self._evaluate_branch(p) for p in self.branches],
            camera_centring=self.camera_centring,
        )
        return self.report.metrics()
