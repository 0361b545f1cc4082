"""BM25 over a corpus with bm25s (Lucene variant; English stopwords; Snowball English stemming by default).

Stemming is on by default because it was measured better on both datasets' held-out queries pooled and on
both reported splits (BENCHMARKS.md, "BM25 with stemming"): NFCorpus dev +0.023 nDCG@10, SciFact test +0.025.
``stemmer=None`` (``"none"`` on the command line) gives the unstemmed index of tandem before 2026-12-02.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from typing import Mapping

from tandem.data.types import Corpus, Run
from tandem.utils import progress_enabled

log = logging.getLogger(__name__)


def stemmer_name(name: str | None) -> str | None:
    """A stemmer setting as given by a user or a config ("none", "" or None: off) -> the name or None."""
    return None if name is None or str(name).strip().lower() in ("", "none", "off", "false") else str(name)


@dataclass(frozen=True)
class BM25Settings:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"
    stemmer: str | None = "english"  # a Snowball stemmer name (PyStemmer); None or "none": no stemming

    def __post_init__(self):
        object.__setattr__(self, "stemmer", stemmer_name(self.stemmer))


def import_bm25s():
    """bm25s, imported without JAX unless this process already uses JAX.

    bm25s picks JAX for its top-k whenever JAX is importable, and its import runs a JAX op, which on a
    machine with a GPU makes JAX reserve 75% of the GPU's memory in every process that builds a BM25
    index (measured on an H200: five parallel tandem runs died out of GPU memory, one process holding
    108 GiB). tandem's top-k runs in numpy, so JAX is hidden while bm25s loads.
    """
    if "bm25s" in sys.modules or "jax" in sys.modules:
        import bm25s

        return bm25s
    hidden = ("jax", "jax.lax")
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import jax` raise ImportError
    try:
        import bm25s
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return bm25s


class BM25:
    """A bm25s index over a :class:`Corpus`; ``search`` returns a run (qid -> pid -> score)."""

    def __init__(self, corpus: Corpus, settings: BM25Settings = BM25Settings(), progress: bool = False):
        bm25s = import_bm25s()

        # subtle: bm25s sets its own logger to DEBUG at import; keep it at the level of its parent
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
        self.corpus = corpus
        self.settings = settings
        self._stemmer = _stemmer(settings.stemmer)
        tokens = bm25s.tokenize(list(corpus), stopwords=settings.stopwords, stemmer=self._stemmer,
                                show_progress=progress_enabled(progress))
        self.model = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        self.model.index(tokens, show_progress=progress_enabled(progress))

    def search(self, queries: Mapping[str, str], k: int = 100, progress: bool = False) -> Run:
        bm25s = import_bm25s()

        qids = list(queries)
        k = min(k, len(self.corpus))
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords=self.settings.stopwords,
                                stemmer=self._stemmer, show_progress=progress_enabled(progress))
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=progress_enabled(progress), n_threads=1,
                                           backend_selection="numpy")
        run: Run = {}
        for row, qid in enumerate(qids):
            # bm25s returns zero-score filler for queries with no matching term; drop it
            keep = scores[row] > 0
            run[qid] = {self.corpus.ids[int(d)]: float(s) for d, s in zip(docs[row][keep], scores[row][keep])}
        return run

    def describe(self) -> dict:
        return {"retriever": "bm25s", **asdict(self.settings)}


def _stemmer(name: str | None):
    """The stem function of a (normalised, as in :class:`BM25Settings`) stemmer name; None: no stemming."""
    if name is None:
        return None
    try:
        import Stemmer
    except ImportError:
        raise ImportError("stemming needs PyStemmer: pip install PyStemmer") from None
    if name not in Stemmer.algorithms():
        from tandem.errors import ConfigError

        raise ConfigError(f"unknown stemmer {name!r}: one of {', '.join(Stemmer.algorithms())}, or none")
    return Stemmer.Stemmer(name).stemWords


def bm25_search(corpus: Corpus, queries: Mapping[str, str], k: int = 100, settings: BM25Settings = BM25Settings(),
                progress: bool = False) -> Run:
    """Index ``corpus`` and retrieve top-``k`` for every query."""
    return BM25(corpus, settings, progress).search(queries, k, progress)


__all__ = ["BM25", "BM25Settings", "bm25_search"]
