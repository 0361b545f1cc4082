"""Step 1: the candidates of each training query, the top-n of a dense retriever, BM25, or both merged by
reciprocal rank fusion (``candidates.jsonl``, resumable)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from tandem.data.types import Dataset
from tandem.mining.lines import append_lines, chunks, done_qids
from tandem.mining.settings import MineSettings
from tandem.utils import progress_bar

log = logging.getLogger("tandem.mine")


def merge_rrf(runs: Mapping[str, Mapping[str, float]], top_n: int) -> list[dict]:
    """One ranked candidate list from several first stages' results for a query.

    Each candidate records its rank and score in every stage that found it; with one stage the
    order is that stage's, with several it is reciprocal rank fusion (sum of 1 / (60 + rank)).
    """
    from tandem.data.trec import ranked
    from tandem.index.fusion import rrf_scores

    per: dict[str, dict] = {}
    for name, docs in runs.items():
        for r, (pid, s) in enumerate(ranked(dict(docs)), start=1):
            e = per.setdefault(pid, {"pid": pid})
            e[f"{name}_rank"], e[f"{name}_score"] = r, round(float(s), 5)
    for pid, f in rrf_scores(list(runs.values())).items():
        per[pid]["rrf"] = f
    if len(runs) == 1:
        name = next(iter(runs))
        order = sorted(per.values(), key=lambda e: e[f"{name}_rank"])
        score_key = f"{name}_score"
    else:
        order = sorted(per.values(), key=lambda e: (-e["rrf"], e["pid"]))
        score_key = "rrf"
    out = []
    for rank, e in enumerate(order[:top_n], start=1):
        c = {"pid": e["pid"], "rank": rank, "score": round(float(e[score_key]), 6)}
        c.update({k: v for k, v in e.items() if k not in ("pid", "rrf")})
        out.append(c)
    return out


class Searchers:
    """The first stages, built lazily (only when some query is still to be retrieved)."""

    def __init__(self, ds: Dataset, settings: MineSettings, work: Path, retriever: str | None,
                 index: str | Path | None, progress: bool, backend: str = "torch"):
        self.ds, self.settings, self.work, self.progress, self.backend = ds, settings, work, progress, backend
        self.retriever, self.index_dir = retriever, index
        self.dense = self.bm25 = None

    def build(self) -> None:
        from tandem.index.dense import build_index, load_index_and_encoder

        if self.settings.dense:
            index_dir = Path(self.index_dir) if self.index_dir else self.work / "index"
            if not self.index_dir and not (index_dir / "manifest.json").exists():  # a given index must exist
                build_index(self.ds.corpus, index_dir, _passage_encoder(self.retriever).set_backend(self.backend),
                            progress=self.progress)
            index, encoder = load_index_and_encoder(index_dir)
            self.dense = index, encoder.set_backend(self.backend)
        if self.settings.bm25:
            from tandem.index.bm25 import BM25, BM25Settings

            self.bm25 = BM25(self.ds.corpus, BM25Settings(stemmer=self.settings.bm25_stemmer))

    def search(self, queries: Mapping[str, str], k: int) -> dict[str, dict]:
        from tandem.index.dense import dense_search

        runs = {}
        if self.dense is not None:
            runs["dense"] = dense_search(*self.dense, queries, k)
        if self.bm25 is not None:
            runs["bm25"] = self.bm25.search(queries, k)
        return runs


def _passage_encoder(retriever: str | None):
    from tandem.models.encoder import Encoder
    from tandem.models.hf import resolve_model
    from tandem.models.retriever import CONFIG_FILE, Retriever

    if retriever and (Path(resolve_model(retriever)) / CONFIG_FILE).exists():
        return Retriever.from_pretrained(retriever).passage_tower()
    return Encoder.from_pretrained(retriever)


def retrieve(ds: Dataset, qids: list[str], path: Path, settings: MineSettings, searchers: Searchers,
             progress: bool = False, stop_after: int | None = None) -> None:
    """Append a candidates line for every query of ``qids`` not yet in ``path``, chunk by chunk."""
    done = done_qids(path)
    todo = [q for q in qids if q not in done]
    if not todo:
        return
    if done:
        log.info("mine: resuming retrieval, %d of %d queries already done", len(done), len(qids))
    searchers.build()
    written = 0
    with open(path, "a", encoding="utf-8") as f, \
            progress_bar(len(qids), "mining candidates", progress, unit="query", initial=len(done)) as bar:
        for chunk in chunks(todo, settings.query_batch):
            runs = searchers.search({q: ds.queries[q] for q in chunk}, settings.top_n)
            append_lines(f, [{"qid": q, "candidates": merge_rrf({n: r.get(q, {}) for n, r in runs.items()},
                                                                settings.top_n)} for q in chunk])
            bar.update(len(chunk))
            written += len(chunk)
            if stop_after is not None and written >= stop_after:
                raise KeyboardInterrupt("stopped after %d queries (test hook)" % written)
