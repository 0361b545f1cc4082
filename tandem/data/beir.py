"""BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` (gzip and CRLF tolerated)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from tandem.data.types import Corpus, Dataset, Qrels, count_missing
from tandem.errors import DataFormatError, DatasetNotFoundError
from tandem.io import open_text

log = logging.getLogger(__name__)


def find_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise DatasetNotFoundError(f"{directory}: no {name} (or {name}.gz); expected the BEIR layout "
                               "corpus.jsonl, queries.jsonl, qrels/<split>.tsv")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; errors name file and line."""
    n_objects = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"invalid JSON ({e.msg} at column {e.colno})", lineno) from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, f"expected a JSON object, found {type(obj).__name__}", lineno)
            n_objects += 1
            yield lineno, obj
    if n_objects == 0:
        raise DataFormatError(path, "file is empty: expected one JSON object per line")


def _id_of(obj: dict, path, lineno: int) -> str:
    if "_id" not in obj:
        raise DataFormatError(path, 'missing "_id"', lineno)
    pid = obj["_id"]
    if not isinstance(pid, (str, int)) or isinstance(pid, bool) or str(pid) == "":
        raise DataFormatError(path, f'"_id" must be a non-empty string, found {pid!r}', lineno)
    return str(pid)


def _text_field(obj: dict, key: str, path, lineno: int, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataFormatError(path, f'missing "{key}"', lineno)
        return ""
    if not isinstance(value, str):
        raise DataFormatError(path, f'"{key}" must be a string, found {type(value).__name__}', lineno)
    return value


def iter_corpus(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Stream ``(pid, title, text)`` from a BEIR ``corpus.jsonl``; duplicate ids are an error."""
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        pid = _id_of(obj, path, lineno)
        if pid in seen:
            raise DataFormatError(path, f'duplicate "_id" {pid!r} (first seen on line {seen[pid]})', lineno)
        seen[pid] = lineno
        yield pid, _text_field(obj, "title", path, lineno, False), _text_field(obj, "text", path, lineno, True)


def load_corpus(path: str | Path) -> Corpus:
    return Corpus.from_records(iter_corpus(path))


def load_queries(path: str | Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        qid = _id_of(obj, path, lineno)
        if qid in queries:
            raise DataFormatError(path, f'duplicate "_id" {qid!r} (first seen on line {lines[qid]})', lineno)
        queries[qid] = _text_field(obj, "text", path, lineno, True)
        lines[qid] = lineno
    return queries


def parse_relevance(value: str, path, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
        raise DataFormatError(path, f"relevance must be an integer, found {value!r}", lineno) from None


def load_qrels(path: str | Path) -> Qrels:
    """Read qrels: BEIR TSV (``query-id corpus-id score``, header optional) or TREC (``qid 0 pid rel``).

    Columns are split on tabs, or on whitespace for TREC files; the first data line fixes the format.
    """
    qrels: Qrels = {}
    ncols = None
    n = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if lineno == 1 and cols and cols[0].strip().lower() in ("query-id", "query_id", "qid", "query"):
                continue
            if ncols is None:
                if len(cols) not in (3, 4):
                    raise DataFormatError(path, f"expected 3 columns (query-id, corpus-id, score) or 4 (TREC: "
                                                f"qid, iter, docid, rel), found {len(cols)}", lineno)
                ncols = len(cols)
            elif len(cols) != ncols:
                raise DataFormatError(path, f"expected {ncols} columns like the first line, found {len(cols)}", lineno)
            qid, pid, rel = (cols[0], cols[1], cols[2]) if ncols == 3 else (cols[0], cols[2], cols[3])
            qrels.setdefault(qid.strip(), {})[pid.strip()] = parse_relevance(rel.strip(), path, lineno)
            n += 1
    if n == 0:
        raise DataFormatError(path, "file is empty: expected qrels rows")
    return qrels


def qrels_path(directory: str | Path, split: str) -> Path:
    directory = Path(directory)
    for name in (f"qrels/{split}.tsv", f"qrels/{split}.tsv.gz", f"qrels/{split}.txt"):
        if (directory / name).exists():
            return directory / name
    available = sorted(p.name.split(".")[0] for p in (directory / "qrels").glob("*")) if (directory / "qrels").is_dir() else []
    raise DatasetNotFoundError(f"{directory}: no qrels for split {split!r}; available splits: {available or 'none'}")


def splits(directory: str | Path) -> list[str]:
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
    from tandem.data.dpr import iter_psgs_tsv
    from tandem.data.msmarco import iter_collection

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


def _load_msmarco(directory: Path, split: str | None, corpus: Corpus | None) -> Dataset:
    from tandem.data.msmarco import load_collection, load_queries_tsv

    if corpus is None:
        corpus = load_collection(find_file(directory, "collection.tsv"))
    names = [split] if split is not None else splits(directory)
    queries: dict[str, str] = {}
    for name in names:
        queries.update(load_queries_tsv(find_file(directory, f"queries.{name}.tsv")))
    qrels: Qrels = {}
    if split is not None:
        path = next((directory / n for n in (f"qrels.{split}.tsv", f"qrels.{split}.tsv.gz")
                     if (directory / n).exists()), None)
        if path is None:
            raise DatasetNotFoundError(f"{directory}: no qrels.{split}.tsv; available splits: {splits(directory) or 'none'}")
        qrels = load_qrels(path)
        mq, mp = count_missing(qrels, queries, corpus)
        if mq or mp:
            log.warning("%s: %d judgments name unknown queries and %d name unknown passages", path, mq, mp)
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name=directory.name, split=split)


def load_beir(directory: str | Path, split: str | None = "test", corpus: Corpus | None = None) -> Dataset:
    """Load a BEIR-layout dataset directory (or MS MARCO passage files, detected by their names).

    Qrels rows for unknown ids are counted and warned about.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetNotFoundError(f"{directory}: not a directory")
    if is_msmarco_layout(directory):
        return _load_msmarco(directory, split, corpus)
    if corpus is None:
        corpus = load_corpus(find_file(directory, "corpus.jsonl"))
    queries = load_queries(find_file(directory, "queries.jsonl"))
    qrels: Qrels = {}
    if split is not None:
        qpath = qrels_path(directory, split)
        qrels = load_qrels(qpath)
        mq, mp = count_missing(qrels, queries, corpus)
        if mq or mp:
            log.warning("%s: %d judgments name unknown queries and %d name unknown passages; they are kept "
                        "for evaluation but cannot be retrieved", qpath, mq, mp)
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name=directory.name, split=split)
