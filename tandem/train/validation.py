"""Validation while a model trains, measured as a user sees it, and the best state kept (early stopping's choice).

A :class:`StageValidator` scores a model on held-out queries with the test's metric: a retriever by retrieving
over the whole corpus (its passage tower encodes the corpus each time), a re-ranker by re-ranking a fixed
first-stage run's top-``depth`` (scored once per call; the first stage does not change while the re-ranker
trains). :class:`BestStates` keeps, per trained model, the state with the best score so far (the start
included: a stage that only makes a model worse ends with the model it started from) on disk under
``OUT/best/``, so a killed run resumes with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from tandem.data.types import Corpus, Qrels, Run
from tandem.io import atomic_path, read_json, write_json

MEASURES = ("nDCG@10", "RR@10", "R@100")


class StageValidator:
    """Corpus-level validation on ``queries`` / ``qrels`` (see the module docstring).

    ``first_stage`` is the run whose top-``depth`` a re-ranker re-ranks; without one a re-ranker cannot be
    validated here (:meth:`can_score` says so) and the trainer falls back on held-out list metrics for it.
    ``measure`` is the score that decides (higher is better).
    """

    def __init__(self, queries: Mapping[str, str], qrels: Qrels, corpus: Corpus, first_stage: Run | None = None,
                 depth: int = 10, measure: str = "nDCG@10", batch_size: int = 64):
        self.queries = {q: t for q, t in queries.items() if q in qrels}
        self.qrels, self.corpus, self.depth, self.measure = qrels, corpus, depth, measure
        self.first_stage = ({q: first_stage[q] for q in self.queries if q in first_stage}
                            if first_stage is not None else None)
        self.batch_size = batch_size

    def can_score(self, kind: str) -> bool:
        return bool(self.queries) and (kind == "retriever" or bool(self.first_stage))

    def __len__(self) -> int:
        return len(self.queries)

    @torch.no_grad()
    def retriever(self, retriever) -> dict[str, Any]:
        """The retriever's top-100 over the whole corpus: mean metrics and per-query ``measure``."""
        mode = retriever.training
        retriever.eval()
        try:
            passages = retriever.passage_tower().encode(list(self.corpus), batch_size=self.batch_size)
            qids = list(self.queries)
            qv = retriever.query_tower().encode([self.queries[q] for q in qids], batch_size=self.batch_size)
        finally:
            retriever.train(mode)
        scores = torch.from_numpy(np.asarray(qv, dtype=np.float32)) @ \
            torch.from_numpy(np.asarray(passages, dtype=np.float32)).T
        top = scores.topk(min(100, scores.shape[1]), dim=1)
        ids = self.corpus.ids
        run = {q: {ids[int(j)]: float(v) for v, j in zip(vals, idx)}
               for q, vals, idx in zip(qids, top.values.tolist(), top.indices.tolist())}
        return self._score(run)

    @torch.no_grad()
    def reranker(self, reranker) -> dict[str, Any]:
        """The first stage's top-``depth`` re-ranked: mean metrics and per-query ``measure``."""
        from tandem.rerank import rerank

        if not self.first_stage:
            raise ValueError("no first-stage run to re-rank")
        mode = reranker.training
        reranker.eval()
        try:
            run = rerank(self.first_stage, self.queries, self.corpus, reranker, self.depth,
                         batch_size=self.batch_size // 2)
        finally:
            reranker.train(mode)
        return self._score(run)

    def _score(self, run: Run) -> dict[str, Any]:
        from tandem.eval.metrics import evaluate_per_query

        per_query = evaluate_per_query(run, self.qrels, MEASURES)
        n = max(1, len(self.queries))  # a query the run misses scores 0
        out: dict[str, Any] = {m: sum(v[m] for v in per_query.values()) / n for m in MEASURES}
        out["queries"] = len(self.queries)
        out["_per_query"] = {q: per_query.get(q, {}).get(self.measure, 0.0) for q in self.queries}
        return out


class BestStates:
    """Each model's best validated state so far, on disk under ``directory`` (``<name>.pt`` + ``state.json``).

    A later state replaces the best only if it scores strictly higher, so on a tie the earlier (shorter-trained)
    state, the start included, is kept; and, with ``p_max`` < 1, only if it also beats the start (the first state
    offered) over the queries by a one-sided paired randomisation p below ``p_max``: early stopping on a mean
    picks noise as readily as gains.
    """

    def __init__(self, directory: Path, main: bool = True):
        self.dir, self.main = Path(directory), main
        path = self.dir / "state.json"
        self.state: dict[str, Any] = read_json(path) if path.exists() else {}

    def history(self, name: str) -> list[dict[str, Any]]:
        return self.state.get(name, {}).get("history", [])

    def best(self, name: str) -> tuple[int, float] | None:
        s = self.state.get(name)
        return (int(s["best_step"]), float(s["best"])) if s and "best_step" in s else None

    def offer(self, name: str, step: int, metrics: Mapping[str, Any], measure: str, model: torch.nn.Module,
              p_max: float = 1.0) -> bool:
        """Record ``model``'s ``metrics`` at ``step`` (``_per_query``: its per-query scores, for the test against
        the start); keep its state if it is the best so far. Returns whether it was."""
        from tandem.eval.stats import one_sided_p, paired_test

        score = float(metrics[measure])
        per_query = metrics.get("_per_query") or {}
        entry = self.state.setdefault(name, {"measure": measure, "history": []})
        record = {"step": step, **{k: round(float(v), 6) for k, v in metrics.items() if not k.startswith("_")}}
        first = "best" not in entry
        if first:
            entry["start_per_query"] = per_query
        better = first or score > entry["best"]
        if not first and p_max < 1.0 and per_query:  # held-out list metrics have no per-query scores: the mean
            start = entry.get("start_per_query") or {}
            p = one_sided_p(paired_test(per_query, start)) if set(per_query) & set(start) else 1.0
            record["p_vs_start"] = round(p, 6)
            better = better and p < p_max
        entry["history"] = [h for h in entry["history"] if h["step"] < step] + [record]
        if better:
            entry.update(best=score, best_step=step)
            if self.main:
                with atomic_path(self.dir / f"{name}.pt") as tmp:
                    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        if self.main:
            write_json(self.dir / "state.json", self.state)
        return better

    def restore(self, name: str, model: torch.nn.Module, step: int) -> bool:
        """Load the best state into ``model`` unless the current one (at ``step``) is it. Returns whether it
        loaded."""
        best = self.best(name)
        if best is None or best[0] == step:
            return False
        model.load_state_dict(torch.load(self.dir / f"{name}.pt", map_location="cpu", weights_only=True))
        return True

    def stale(self, name: str, patience: int) -> bool:
        """Whether the last ``patience`` validations of ``name`` brought no new best."""
        h, best = self.history(name), self.best(name)
        return bool(patience) and best is not None and sum(1 for e in h if e["step"] > best[0]) >= patience

    def summary(self) -> dict[str, Any]:
        return {name: {"best_step": s.get("best_step"), "best": s.get("best"), "measure": s.get("measure"),
                       "history": s.get("history", [])} for name, s in self.state.items()}
