"""The gated re-ranker's lexical weight chosen at corpus level, where training on lists cannot find it.

The gated re-ranker scores ``base + w_lex * lexical``: ``base`` is its bi-encoder cosine (times ``scale``) plus
its interaction head, ``lexical`` a bounded BM25 feature in [0, 1]. Listwise training barely moves ``w_lex``
(it starts at 0; 18 warm-up steps left it at 0.08 on SciFact, a few hundredths of a logit against a cosine term
that spreads several logits), and fitting it to training lists goes wrong the other way: those lists are the
dense retriever's own top candidates, among which the cosine hardly separates the positive, and a fit drove the
cosine scale to 0.03 (session 1). Re-ranking a first stage's whole top-k instead, the weight that ranks best is
large: on the zero-shot top-20, ``w_lex`` 8-16 gives +0.04 nDCG@10 on SciFact and +0.02 on NFCorpus over 0
(BENCHMARKS.md, "The teacher's lexical weight").

:func:`fit_lexical_weight` picks ``w_lex`` from a grid by the mean nDCG@10 of re-ranking each query's candidates
(the first stage's top-k the lists were mined from) on training queries the recipe does not validate on. The
re-ranker runs once over the pairs (with ``w_lex = 0``); each weight on the grid is then a sum. The current
weight competes too, so the fit never picks a weight that ranks worse than the trained one on these queries.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from tandem.data.types import Corpus, Qrels

log = logging.getLogger(__name__)

GRID = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def lexical_features(reranker, pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> np.ndarray:
    """The gated re-ranker's lexical feature (N,) for ``pairs``, as its forward pass sees it (no network run)."""
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        out.append(reranker.tokenize([q for q, _ in chunk], [p for _, p in chunk])["lexical"].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def fit_lexical_weight(reranker, queries: Mapping[str, str], candidates: Mapping[str, Sequence[str]],
                       qrels: Qrels, corpus: Corpus, grid: Sequence[float] = GRID, batch_size: int = 32,
                       progress: bool = False) -> dict:
    """Set ``reranker.w_lex`` to the weight on ``grid`` (or its current one) whose re-ranking of ``candidates``
    (query id -> first-stage passage ids, best first) has the best mean nDCG@10 over ``queries``; returns what
    was measured (``w_before``, ``w_after``, ``queries``, ``pairs``, ``ndcg`` per weight)."""
    import torch

    from tandem.eval.metrics import evaluate

    qids = [q for q in queries if candidates.get(q) and q in qrels]
    pairs, owner = [], []
    for q in qids:
        for pid in candidates[q]:
            pairs.append((queries[q], corpus.text(pid)))
            owner.append((q, pid))
    before = float(reranker.lexical_weight().detach())
    if not pairs:
        return {"w_before": before, "w_after": before, "queries": 0, "pairs": 0, "ndcg": {}}
    with torch.no_grad():
        reranker.w_lex.zero_()
        try:
            base = reranker.predict(pairs, batch_size=batch_size, progress=progress).astype(np.float64)
        finally:
            reranker.w_lex.fill_(before)
    lex = lexical_features(reranker, pairs).astype(np.float64)

    def ndcg(w: float) -> float:
        run: dict[str, dict[str, float]] = {}
        for (q, pid), s in zip(owner, base + w * lex):
            run.setdefault(q, {})[pid] = float(s)
        return evaluate(run, {q: qrels[q] for q in qids}, ["nDCG@10"])["nDCG@10"]

    scores = {float(w): ndcg(float(w)) for w in sorted({*map(float, grid), before})}
    best = max(scores, key=lambda w: (scores[w], w == before, -w))  # ties: keep the trained weight, else the smaller
    with torch.no_grad():
        reranker.w_lex.fill_(best)
    result = {"w_before": before, "w_after": best, "queries": len(qids), "pairs": len(pairs),
              "ndcg_before": scores[before], "ndcg_after": scores[best],
              "ndcg": {f"{w:g}": round(v, 4) for w, v in scores.items()}}
    log.info("gated re-ranker lexical weight %.3f -> %.3f on %d training queries' first-stage top-%d "
             "(nDCG@10 %.4f -> %.4f)", before, best, len(qids), max(map(len, candidates.values())),
             scores[before], scores[best])
    return result
