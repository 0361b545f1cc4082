"""Data loading: BEIR, MS MARCO and TREC formats, dataset resolution and checks."""
from __future__ import annotations

from tandem.data.beir import iter_corpus, load_corpus, load_queries
from tandem.data.check import check_dataset
from tandem.data.dataset import corpus_file, load_any_corpus, load_beir, load_dataset, qrels_path, splits
from tandem.data.msmarco import load_collection, load_qrels_trec, load_queries_tsv
from tandem.data.registry import resolve_dataset
from tandem.data.trec import load_qrels, ranked, read_run, write_qrels, write_run
from tandem.data.types import Corpus, Dataset, Qrels, Run

__all__ = [
    "Corpus", "Dataset", "Qrels", "Run", "check_dataset", "corpus_file", "iter_corpus", "load_any_corpus", "load_beir",
    "load_collection", "load_dataset",
    "load_corpus", "load_qrels", "load_qrels_trec", "load_queries", "load_queries_tsv", "qrels_path",
    "ranked", "read_run", "resolve_dataset", "splits", "write_qrels", "write_run",
]
