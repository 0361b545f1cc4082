"""Retrieval metrics through ir_measures (pytrec_eval underneath)."""

from __future__ import annotations

from typing import Iterable, Mapping

from tandem.data.types import Qrels, Run

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@100", "R@1000")


def evaluate(run: Run, qrels: Qrels, measures: Iterable[str] = DEFAULT_MEASURES) -> dict[str, float]:
    """Mean of each measure over the queries of ``qrels``.

    Queries in ``qrels`` that the run does not answer count as zero (the run is padded with empty
    rankings), so a run that skips hard queries cannot look better than it is.
    """
    per_query = evaluate_per_query(run, qrels, measures)
    n = len(per_query) or 1
    names = list(measures)
    return {m: sum(q.get(m, 0.0) for q in per_query.values()) / n for m in names}


def evaluate_per_query(run: Run, qrels: Qrels, measures: Iterable[str] = DEFAULT_MEASURES) -> dict[str, dict[str,
                                                                                                             float]]:
    """qid -> measure -> value, for every query that has at least one relevant passage."""
    import ir_measures

    names = list(measures)
    parsed = [ir_measures.parse_measure(m) for m in names]
    judged = {q: d for q, d in qrels.items() if any(r > 0 for r in d.values())}
    out: dict[str, dict[str, float]] = {q: {m: 0.0 for m in names} for q in judged}
    run = {q: {p: float(s) for p, s in docs.items()} for q, docs in run.items() if q in judged and docs}
    if not run:
        return out
    for metric in ir_measures.iter_calc(parsed, judged, run):
        out[metric.query_id][str(metric.measure)] = float(metric.value)
    return out


def format_table(results: Mapping[str, Mapping[str, float]], measures: Iterable[str] = DEFAULT_MEASURES) -> str:
    """A plain-text table: one row per system, one column per measure."""
    names = list(measures)
    width = max([len(s) for s in results] + [6])
    lines = [f"{'run':<{width}}  " + "  ".join(f"{m:>8}" for m in names)]
    for system, vals in results.items():
        lines.append(f"{system:<{width}}  " + "  ".join(
            f"{vals.get(m, float('nan')):>8.0f}" if m == "seconds" else f"{vals.get(m, float('nan')):>8.4f}"
            for m in names))
    return "\n".join(lines)
