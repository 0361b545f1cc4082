"""MS MARCO passage files: ``collection.tsv`` (pid, text), ``queries.*.tsv`` (qid, text), TREC qrels."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tandem.data.beir import load_qrels
from tandem.data.types import Corpus, Qrels
from tandem.errors import DataFormatError
from tandem.io import open_text


def iter_tsv_pairs(path: str | Path, what: str) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a two-column TSV; wrong column counts and duplicates name the line."""
    seen: set[str] = set()
    n = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != 2:
                raise DataFormatError(path, f"expected 2 tab-separated columns ({what} id, text), found {len(cols)}", lineno)
            key = cols[0].strip()
            if not key:
                raise DataFormatError(path, f"empty {what} id", lineno)
            if key in seen:
                raise DataFormatError(path, f"duplicate {what} id {key!r}", lineno)
            seen.add(key)
            n += 1
            yield key, cols[1]
    if n == 0:
        raise DataFormatError(path, f"file is empty: expected {what} lines")


def load_collection(path: str | Path) -> Corpus:
    return Corpus.from_records((pid, "", text) for pid, text in iter_tsv_pairs(path, "passage"))


def load_queries_tsv(path: str | Path) -> dict[str, str]:
    return dict(iter_tsv_pairs(path, "query"))


def load_qrels_trec(path: str | Path) -> Qrels:
    return load_qrels(path)
