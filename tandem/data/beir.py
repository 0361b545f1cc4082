"""BEIR files: ``corpus.jsonl`` and ``queries.jsonl`` (gzip and CRLF tolerated). Qrels are read by
:func:`tandem.data.trec.load_qrels`, whole datasets (BEIR or MS MARCO layout) by :mod:`tandem.data.dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tandem.data.types import Corpus
from tandem.errors import DataFormatError, DatasetNotFoundError
from tandem.io import iter_jsonl


def find_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise DatasetNotFoundError(f"{directory}: no {name} (or {name}.gz); expected the BEIR layout "
                               "corpus.jsonl, queries.jsonl, qrels/<split>.tsv")


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


_MOVED = {"load_beir": "dataset", "load_dataset": "dataset", "qrels_path": "dataset", "splits": "dataset",
          "corpus_file": "dataset", "load_any_corpus": "dataset", "iter_any_corpus": "dataset",
          "is_msmarco_layout": "dataset", "load_qrels": "trec", "parse_relevance": "trec"}


def __getattr__(name: str):
    """Names that lived here before the dataset module: still importable from ``tandem.data.beir``."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"tandem.data.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
