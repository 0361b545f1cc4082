"""A dataset directory, whatever its layout: BEIR (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)
or MS MARCO passage files (``collection.tsv``, ``queries.<split>.tsv``, ``qrels.<split>.tsv``), and passage
files of any format tandem reads (BEIR, MS MARCO, DPR's ``psgs_w100.tsv``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from tandem.data.beir import find_file, iter_corpus, load_corpus, load_queries
from tandem.data.dpr import iter_psgs_tsv
from tandem.data.msmarco import iter_collection, load_collection, load_queries_tsv
from tandem.data.trec import load_qrels
from tandem.data.types import Corpus, Dataset, Qrels, count_missing
from tandem.errors import DatasetNotFoundError
from tandem.io import open_text

log = logging.getLogger(__name__)


def qrels_path(directory: str | Path, split: str) -> Path:
    """The qrels file of ``split``: ``qrels/<split>.tsv`` (BEIR; ``.tsv.gz``, ``.txt``) or ``qrels.<split>.tsv``
    (MS MARCO; ``.tsv.gz``)."""
    directory = Path(directory)
    names = ((f"qrels.{split}.tsv", f"qrels.{split}.tsv.gz") if is_msmarco_layout(directory) else
             (f"qrels/{split}.tsv", f"qrels/{split}.tsv.gz", f"qrels/{split}.txt"))
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise DatasetNotFoundError(f"{directory}: no qrels for split {split!r} (looked for {names[0]}); available "
                               f"splits: {splits(directory) or 'none'}")


def splits(directory: str | Path) -> list[str]:
    """The splits that have qrels, in either layout."""
    if is_msmarco_layout(directory):
        return sorted({p.name.split(".")[1] for p in Path(directory).glob("qrels.*.tsv*")})
    q = Path(directory) / "qrels"
    return sorted({p.name.split(".")[0] for p in q.glob("*")}) if q.is_dir() else []


def corpus_file(directory: str | Path) -> Path:
    """The passages file of a dataset directory: BEIR corpus.jsonl or MS MARCO collection.tsv."""
    directory = Path(directory)
    return find_file(directory, "collection.tsv" if is_msmarco_layout(directory) else "corpus.jsonl")


def load_any_corpus(path: str | Path) -> Corpus:
    """Passages from BEIR corpus.jsonl, MS MARCO collection.tsv or DPR psgs_w100.tsv (by name and header)."""
    return Corpus.from_records(iter_any_corpus(path))


def iter_any_corpus(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Stream ``(pid, title, text)`` from any passages file :func:`load_any_corpus` reads, in file order."""
    path = Path(path)
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        return iter_corpus(path)
    with open_text(path) as f:
        first = f.readline()
    if first.startswith("id\ttext\ttitle"):
        return iter_psgs_tsv(path)
    return iter_collection(path)


def is_msmarco_layout(directory: str | Path) -> bool:
    """MS MARCO passage files as distributed: collection.tsv, queries.<split>.tsv, qrels.<split>.tsv."""
    d = Path(directory)
    return not any((d / n).exists() for n in ("corpus.jsonl", "corpus.jsonl.gz")) and \
        any((d / n).exists() for n in ("collection.tsv", "collection.tsv.gz"))


def _msmarco_parts(directory: Path, split: str | None, corpus: Corpus | None) -> tuple[Corpus, dict[str, str]]:
    if corpus is None:
        corpus = load_collection(find_file(directory, "collection.tsv"))
    queries: dict[str, str] = {}
    for name in [split] if split is not None else splits(directory):
        queries.update(load_queries_tsv(find_file(directory, f"queries.{name}.tsv")))
    return corpus, queries


def _judgments(directory: Path, split: str, queries: dict[str, str], corpus: Corpus) -> Qrels:
    """The split's qrels; rows naming unknown ids are kept for evaluation and warned about."""
    path = qrels_path(directory, split)
    qrels = load_qrels(path)
    mq, mp = count_missing(qrels, queries, corpus)
    if mq or mp:
        log.warning("%s: %d judgments name unknown queries and %d name unknown passages; they are kept "
                    "for evaluation but cannot be retrieved", path, mq, mp)
    return qrels


def load_dataset(directory: str | Path, split: str | None = "test", corpus: Corpus | None = None) -> Dataset:
    """Load a dataset directory: the BEIR layout, or MS MARCO passage files (detected by their names).

    ``split`` None loads every split's queries (MS MARCO) or all queries (BEIR) and no qrels.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetNotFoundError(f"{directory}: not a directory")
    if is_msmarco_layout(directory):
        corpus, queries = _msmarco_parts(directory, split, corpus)
    else:
        corpus = corpus if corpus is not None else load_corpus(find_file(directory, "corpus.jsonl"))
        queries = load_queries(find_file(directory, "queries.jsonl"))
    qrels = _judgments(directory, split, queries, corpus) if split is not None else {}
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name=directory.name, split=split)


load_beir = load_dataset  # the name it had first: BEIR was the only layout
