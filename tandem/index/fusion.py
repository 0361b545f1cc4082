"""Hybrid first stage: reciprocal rank fusion (RRF) of several runs, e.g. BM25 and dense.

    fused = fuse_runs([bm25_run, dense_run])          # sum over runs of w / (k + rank)

RRF (Cormack, Clarke and Buettcher, SIGIR 2009) needs no score calibration between the systems
and has one constant, k = 60 by convention; tandem does not tune it. A passage missing from a
run simply gets nothing from that run.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from tandem.data.trec import ranked
from tandem.errors import UsageError

RRF_K = 60  # the constant of Cormack et al. (2009)
HYBRID_DEPTH = 100  # hybrid search fuses at least each stage's top-100 (RRF needs the ranks below k)


def rrf_scores(rankings: Sequence[Mapping[str, float]], k: int = RRF_K, weights: Sequence[float] | None = None,
               depth: int | None = None) -> dict[str, float]:
    """Fused scores of one query: sum over rankings of ``weight / (k + rank)``.

    Args:
        rankings: per first stage, passage id -> score (higher is better); ranks are taken from
            the scores (ties broken by id).
        k: the RRF constant.
        weights: one per ranking (default 1).
        depth: only each ranking's first ``depth`` passages count (default: all).
    """
    if weights is not None and len(weights) != len(rankings):
        raise UsageError(f"{len(weights)} fusion weights for {len(rankings)} runs")
    out: dict[str, float] = {}
    for j, docs in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[j])
        for rank, (pid, _) in enumerate(ranked(dict(docs), depth), start=1):
            out[pid] = out.get(pid, 0.0) + w / (k + rank)
    return out


def fuse_runs(runs: Sequence[Mapping[str, Mapping[str, float]]], k: int = RRF_K,
              weights: Sequence[float] | None = None, depth: int | None = 1000,
              top: int | None = None) -> dict[str, dict[str, float]]:
    """RRF of whole runs (qid -> pid -> score); a query in any run is in the result.

    ``top`` keeps each query's best ``top`` fused passages (default: all).
    """
    if not runs:
        raise UsageError("nothing to fuse: no runs")
    if k < 0:
        raise UsageError(f"the RRF constant k must be >= 0, not {k}")
    qids = list(dict.fromkeys(q for r in runs for q in r))
    out: dict[str, dict[str, float]] = {}
    for q in qids:
        fused = rrf_scores([r.get(q, {}) for r in runs], k, weights, depth)
        out[q] = dict(ranked(fused, top))
    return out


__all__ = ["HYBRID_DEPTH", "RRF_K", "rrf_scores", "fuse_runs"]
