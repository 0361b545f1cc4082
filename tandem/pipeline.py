"""Search with a trained pair: dense retrieval from an index, then (optionally) re-ranking.

    from tandem import Pipeline
    pipe = Pipeline.load("runs/joint-idx", reranker="runs/joint/reranker")
    hits = pipe.search("vitamin D and bone density", k=10, candidates=100)

With ``hybrid=True`` the first stage is BM25 and the dense index fused by reciprocal rank fusion
(tandem.index.fusion), which on SciFact ranks better than either alone (BENCHMARKS.md).

Many queries are searched in one batch: one encoder pass, one FAISS search, one re-ranker pass
over every (query, candidate) pair, so callers that gather requests (the HTTP service) pay the
model cost once per batch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tandem.data.trec import ranked
from tandem.data.types import Corpus
from tandem.errors import IncompatibleArtifactError, UsageError
from tandem.index.fusion import HYBRID_DEPTH, rrf_scores

log = logging.getLogger(__name__)


@dataclass
class Hit:
    pid: str
    score: float  # the final score: re-ranker logit when re-ranked, else the retrieval score
    rank: int  # 1-based final rank
    retrieval_score: float
    retrieval_rank: int
    rerank_score: float | None = None
    title: str = ""
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Request:
    query: str
    k: int = 10
    candidates: int = 100
    rerank: bool = True


class Pipeline:
    """A dense index (and the encoder that built it), its corpus texts and an optional re-ranker."""

    def __init__(self, index, encoder, corpus: Corpus | None = None, reranker=None, info: dict | None = None,
                 bm25=None):
        self.index, self.encoder, self.corpus, self.reranker = index, encoder, corpus, reranker
        self.bm25 = bm25  # with a BM25 index over the same corpus, the first stage is hybrid (RRF)
        self.info = info or {}
        self._lock = threading.Lock()  # torch modules are used by one thread at a time
        self._passage_encoder = None  # loaded on the first append

    @classmethod
    def load(cls, index_dir: str | Path, reranker: str | Path | None = None, data: str | Path | None = None,
             allow_untrained_reranker: bool = False, backend: str = "torch", hybrid: bool = False) -> "Pipeline":
        """Load an index (its model encodes queries), its corpus and a re-ranker.

        Args:
            data: the dataset (BEIR dir or name) whose corpus the index holds; default: the corpus
                file recorded in the index manifest. Texts are needed for re-ranking and results.
            allow_untrained_reranker: accept a re-ranker whose head is new (scores are noise).
            backend: the query encoder's runtime: torch, onnx or onnx-int8.
            hybrid: also build a BM25 index over the corpus and fuse its ranking with the dense one
                (reciprocal rank fusion) as the first stage.
        """
        from tandem.index.dense import load_index_and_encoder

        index_dir = Path(index_dir)
        index, encoder = load_index_and_encoder(index_dir)  # refuses a directory that is not a tandem index
        encoder.set_backend(backend)
        try:
            return cls._around(index, encoder, index_dir, reranker, data, allow_untrained_reranker, backend, hybrid)
        except BaseException:
            index.close()  # a Milvus store's connection (and a Lite store's lock) goes with the failed load
            raise

    @classmethod
    def _around(cls, index, encoder, index_dir: Path, reranker, data, allow_untrained_reranker: bool, backend: str,
                hybrid: bool) -> "Pipeline":
        """The corpus, BM25 and re-ranker around a loaded index."""
        from tandem.index.dense import index_corpus

        corpus, corpus_file = index_corpus(index, data)
        if corpus is None and (reranker is not None or hybrid):
            raise UsageError(f"{index_dir}: {'re-ranking' if reranker is not None else 'hybrid search'} needs the "
                              "passage texts; pass the dataset (--data)")
        bm25 = None
        if hybrid:
            from tandem.index.bm25 import BM25

            bm25 = BM25(corpus)
        ce = None
        if reranker is not None:
            from tandem.models.reranker import Reranker

            ce = Reranker.from_pretrained(reranker)
            if not ce.settings.trained:
                if not allow_untrained_reranker:
                    raise IncompatibleArtifactError(f"re-ranker {reranker!r} has an untrained head: its scores are "
                                                    "noise. Train it (tandem train --mode reranker) or pass a trained "
                                                    "one")
                log.warning("re-ranker %s has an untrained head: its scores are noise", reranker)
            ce.eval()
        info = {"index": str(index_dir), "passages": len(index), "dim": index.dim,
                "index_type": index.info.get("index_type"), "store": index.store,
                "model": index.info.get("model"), "backend": backend,
                "reranker": str(reranker) if reranker is not None else None,
                "corpus": str(corpus_file) if corpus_file else None, "hybrid": hybrid,
                "bm25": bm25.describe() if bm25 is not None else None, "manifest": index.info}
        return cls(index, encoder, corpus, ce, info, bm25)

    def search(self, query: str | Sequence[str], k: int = 10, candidates: int = 100, rerank: bool = True,
               with_text: bool = True) -> list[Hit] | list[list[Hit]]:
        """Ranked hits for one query (a list) or for many (a list per query)."""
        many = not isinstance(query, str)
        queries = list(query) if many else [query]
        out = self.search_batch([Request(q, k, candidates, rerank) for q in queries], with_text)
        return out if many else out[0]

    def search_batch(self, requests: Sequence[Request], with_text: bool = True) -> list[list[Hit]]:
        """Answer many requests with one encoder pass, one index search and one re-ranker pass."""
        if not requests:
            return []
        for r in requests:
            if not r.query.strip():
                raise UsageError("empty query")
            if r.k < 1 or r.candidates < 1:
                raise UsageError("k and candidates must be >= 1")
        depth = max(max(r.k, r.candidates) for r in requests)
        if self.bm25 is not None:  # fuse deeper rankings than asked for: RRF needs each stage's ranks
            depth = max(depth, HYBRID_DEPTH)
        with self._lock:
            qv = self.encoder.encode([r.query for r in requests], batch_size=64)
            scores, positions = self.index.search_vectors(qv, depth)
            lexical = None if self.bm25 is None else \
                self.bm25.search({str(i): r.query for i, r in enumerate(requests)}, k=depth)
            firsts = []
            for i, (r, row_s, row_p) in enumerate(zip(requests, scores, positions)):
                n = max(r.k, r.candidates) if (r.rerank and self.reranker is not None) else r.k
                dense = [(self.index.ids[int(p)], float(s)) for s, p in zip(row_s, row_p) if p >= 0]
                if lexical is not None:
                    dense = ranked(rrf_scores([dict(dense), lexical.get(str(i), {})]))
                firsts.append(dense[:n])
            ce_scores: list[np.ndarray | None] = [None] * len(requests)
            todo = [i for i, r in enumerate(requests) if r.rerank and self.reranker is not None]
            if todo:
                pairs = [(requests[i].query, self.corpus.text(pid)) for i in todo for pid, _ in firsts[i]]
                flat = self.reranker.predict(pairs, batch_size=32) if pairs else np.zeros(0)
                at = 0
                for i in todo:
                    ce_scores[i] = flat[at : at + len(firsts[i])]
                    at += len(firsts[i])
        return [self._hits(first, ce, r.k, with_text) for first, ce, r in zip(firsts, ce_scores, requests)]

    def _hits(self, first: list[tuple[str, float]], ce: np.ndarray | None, k: int, with_text: bool) -> list[Hit]:
        hits = [Hit(pid, s, 0, s, rank) for rank, (pid, s) in enumerate(first, start=1)]
        if ce is not None:
            for h, c in zip(hits, ce):
                h.rerank_score = h.score = float(c)
            hits.sort(key=lambda h: (-h.score, h.retrieval_rank))
        hits = hits[:k]
        for rank, h in enumerate(hits, start=1):
            h.rank = rank
            if with_text and self.corpus is not None:
                i = self.corpus.index[h.pid]
                h.title, h.text = self.corpus.title(i).strip(), self.corpus.body(i)
        return hits

    def append(self, records: Sequence[tuple[str, str, str]]) -> int:
        """Add ``(pid, title, text)`` passages to a live Milvus-store index: encoded with the index's passage
        encoder, written to the collection and recorded in the index directory, then searchable here at once
        (and by other processes after a reload). Returns the number added."""
        from tandem.index.dense import passage_encoder_for
        from tandem.index.faiss_index import require_appendable
        from tandem.index.milvus_store import append_passages

        require_appendable(self.index)  # before the passage encoder loads
        with self._lock:
            if self._passage_encoder is None:
                self._passage_encoder = passage_encoder_for(self.index.info)
            n = append_passages(self.index, records, self._passage_encoder)
            if self.corpus is not None:
                self.corpus = self.corpus.concat(Corpus.from_records((pid, title or "", text)
                                                                     for pid, title, text in records))
                if self.bm25 is not None:
                    from tandem.index.bm25 import BM25

                    self.bm25 = BM25(self.corpus, self.bm25.settings)
            self.info["passages"] = len(self.index)
        return n

    def close(self) -> None:
        """Release the index (a Milvus store's connection; nothing for FAISS)."""
        self.index.close()


__all__ = ["Pipeline", "Hit", "Request"]
