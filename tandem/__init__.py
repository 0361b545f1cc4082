"""tandem: train a dense retriever and a re-ranker together (RocketQAv2) and search with them.

Everything the command line does is one import away; names load lazily so ``import tandem``
(and ``tandem --help``) stays fast::

    from tandem import load_beir, BM25, Encoder, build_index, dense_search, evaluate, train
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_beir": "tandem.data", "load_corpus": "tandem.data", "load_queries": "tandem.data",
    "load_qrels": "tandem.data", "read_run": "tandem.data", "write_run": "tandem.data",
    "resolve_dataset": "tandem.data", "check_dataset": "tandem.data", "Corpus": "tandem.data",
    "BM25": "tandem.index", "bm25_search": "tandem.index", "DenseIndex": "tandem.index",
    "build_index": "tandem.index", "dense_search": "tandem.index", "load_index_and_encoder": "tandem.index",
    "Encoder": "tandem.models.encoder", "Retriever": "tandem.models.retriever",
    "Reranker": "tandem.models.reranker", "GatedReranker": "tandem.models.gated",
    "evaluate": "tandem.eval.metrics", "rerank": "tandem.rerank",
    "train": "tandem.train", "Trainer": "tandem.train", "TrainConfig": "tandem.train", "load_config": "tandem.train",
    "run_recipe": "tandem.recipe", "load_recipe": "tandem.recipe",
    "mine": "tandem.mining", "MineSettings": "tandem.mining", "Pipeline": "tandem.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tandem' has no attribute {name!r}")
