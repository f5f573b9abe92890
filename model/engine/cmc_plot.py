"""CMC curves of an evaluation as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from model.engine.report import EvalReport


def plot_cmc(report: EvalReport, path: str | Path, title: str | None = None) -> Path:
    """One curve per case (solid), plus its re-ranked curve (dashed) when present; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        for i, case in enumerate(report.cases):
            color = f"C{i}"
            ranks = range(1, len(case.plain.cmc) + 1)
            ax.plot(ranks, case.plain.cmc, color=color, label=f"{case.label} (mAP {case.plain.mAP:.1f})")
            if case.reranked is not None:
                ax.plot(ranks, case.reranked.cmc, color=color, linestyle="--",
                        label=f"{case.label} +rerank (mAP {case.reranked.mAP:.1f})")
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(1, max((len(c.plain.cmc) for c in report.cases), default=1))
        ax.grid(alpha=0.3)
        ax.set_title(title or "CMC")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
