"""Second stage: re-score the top-k of a first-stage run with a cross-encoder."""

from __future__ import annotations

from typing import Mapping

from tandem.data.trec import ranked
from tandem.data.types import Corpus, Run
from tandem.models.reranker import Reranker


def rerank(run: Run, queries: Mapping[str, str], corpus: Corpus, reranker: Reranker, k: int = 20,
           batch_size: int = 32, progress: bool = False, keep_tail: bool = True,
           cache: dict[tuple[str, str], float] | None = None) -> Run:
    """Per query, the first stage's top-``k`` re-scored by ``reranker`` (logits), in the new order.

    With ``keep_tail`` the first stage's passages below rank ``k`` follow in their original order
    (scores below every re-ranked one), so recall at depths beyond ``k`` stays the first stage's;
    without it they are dropped. Queries without text in ``queries`` are left out.

    ``cache`` ((qid, pid) -> score) is read and filled: re-ranking several first stages of the same
    queries (e.g. dense and hybrid) scores each pair once.
    """
    cache = {} if cache is None else cache
    keys = [(qid, pid) for qid, docs in run.items() if qid in queries for pid, _ in ranked(docs, k)]
    todo = [key for key in dict.fromkeys(keys) if key not in cache]
    pairs = [(queries[qid], corpus.text(pid)) for qid, pid in todo]
    scores = reranker.predict(pairs, batch_size=batch_size, progress=progress) if pairs else []
    cache.update((key, float(s)) for key, s in zip(todo, scores))
    out: Run = {}
    for qid, pid in keys:
        out.setdefault(qid, {})[pid] = cache[(qid, pid)]
    if keep_tail:
        for qid, docs in out.items():
            floor = min(docs.values())
            for depth, (pid, _) in enumerate(ranked(run[qid])[k:], start=1):
                docs[pid] = floor - depth
    return out
