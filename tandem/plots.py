"""PNG plots for a recipe report: metric per system, loss curves, held-out nDCG@10 over steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(out: Path, report: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(report["systems"])
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.42 * len(names)))
    vals = [report["systems"][n]["nDCG@10"] for n in names]
    val = [(report["systems"][n].get("val") or {}).get("nDCG@10") for n in names]
    both = any(v is not None for v in val)
    height = 0.4 if both else 0.8
    ys = [i + (height / 2 if both else 0) for i in range(len(names))]
    ax.barh(ys, vals, height=height, color="#4a7ab5", label=f"test ({report.get('split', 'test')})")
    for y, v in zip(ys, vals):
        ax.text(v + 0.003, y, f"{v:.3f}", va="center", fontsize=7)
    if both:
        ax.barh([i - height / 2 for i in range(len(names))], [v or 0.0 for v in val], height=height,
                color="#e0a040", label="validation")
        for i, v in enumerate(val):
            if v is not None:
                ax.text(v + 0.003, i - height / 2, f"{v:.3f}", va="center", fontsize=7)
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(names)), [n + (" *" if n == report.get("headline") else "") for n in names])
    ax.set_xlabel("nDCG@10" + ("  (* selected on validation)" if report.get("headline") else ""))
    shown = vals + [v for v in val if v is not None]
    ax.set_xlim(max(0.0, min(shown) - 0.05), max(shown) + 0.05)
    written.append(_save(fig, out / "systems.png"))

    curves = report.get("curves", {})
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for stage, records in curves.items():
        steps = [r for r in records if "loss" in r]
        for term in ("kl", "reranker", "retriever_ce"):
            pts = [(r["step"], r[term]) for r in steps if term in r]
            if pts:
                ax.plot(*zip(*pts), label=f"{stage}: {term}", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    written.append(_save(fig, out / "losses.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for stage, records in curves.items():
        for model in ("retriever", "reranker", "retriever_corpus"):
            pts = [(r["step"], r["heldout"][model]["nDCG@10"]) for r in records
                   if "heldout" in r and model in r["heldout"]]
            if pts:
                label = "retriever over the corpus" if model == "retriever_corpus" else f"{model} (lists)"
                ax.plot(*zip(*pts), marker="o", label=f"{stage}: {label}", lw=1, ls="--" if "corpus" in model else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out nDCG@10")
    ax.legend(fontsize=7)
    written.append(_save(fig, out / "heldout.png"))
    return written
