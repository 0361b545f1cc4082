"""MS MARCO passage files: ``collection.tsv`` (pid, text), ``queries.*.tsv`` (qid, text), TREC qrels."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from tandem.data.trec import load_qrels
from tandem.data.types import Corpus, Qrels
from tandem.errors import DataFormatError
from tandem.io import open_text


def iter_tsv_pairs(path: str | Path, what: str) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a two-column TSV; wrong column counts and duplicates name the line."""
    seen: set[str] = set()
    for lineno, cols in _rows(path, 2, f"{what} id, text", ids=1):
        key = cols[0].strip()
        if key in seen:
            raise DataFormatError(path, f"duplicate {what} id {key!r}", lineno)
        seen.add(key)
        yield key, cols[1]


def iter_collection(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Stream ``(pid, title, text)`` from an MS MARCO ``collection.tsv`` (no titles: ``title`` is empty)."""
    return ((pid, "", text) for pid, text in iter_tsv_pairs(path, "passage"))


def load_collection(path: str | Path) -> Corpus:
    return Corpus.from_records(iter_collection(path))


def load_queries_tsv(path: str | Path) -> dict[str, str]:
    return dict(iter_tsv_pairs(path, "query"))


def load_qrels_trec(path: str | Path) -> Qrels:
    return load_qrels(path)


def _rows(path: str | Path, ncols: int, names: str, ids: int = 2) -> Iterator[tuple[int, list[str]]]:
    """Stream ``(line number, columns)`` of a TSV with exactly ``ncols`` columns, the first ``ids`` of
    them non-empty ids (file:line errors); an empty file is an error."""
    n = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != ncols:
                raise DataFormatError(path, f"expected {ncols} tab-separated columns ({names}), found {len(cols)}",
                                      lineno)
            if not all(c.strip() for c in cols[:ids]):
                raise DataFormatError(path, f"empty id ({names})", lineno)
            n += 1
            yield lineno, cols
    if n == 0:
        raise DataFormatError(path, f"file is empty: expected lines of {names}")


def iter_top1000(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """MS MARCO's ``top1000.<split>`` re-ranking candidates: ``(qid, pid, query text)`` per line.

    The file (qid, pid, query, passage) carries no scores; callers rank each query's passages in
    file order.
    """
    for _, cols in _rows(path, 4, "qid, pid, query, passage"):
        yield cols[0].strip(), cols[1].strip(), cols[2]


def top1000_to_trec(path: str | Path, out: str | Path, queries_out: str | Path | None = None) -> tuple[int, int]:
    """Stream a top-1000 file into a TREC run (rank = order in the file, score = -rank), optionally
    writing the queries it names as ``qid<TAB>text``; memory holds one counter per query.
    Returns (queries, lines)."""
    from tandem.io import atomic_open

    ranks: dict[str, int] = {}
    texts: dict[str, str] = {}
    lines = 0
    with atomic_open(out) as f:
        for qid, pid, query in iter_top1000(path):
            r = ranks[qid] = ranks.get(qid, 0) + 1
            if queries_out is not None:
                texts.setdefault(qid, query)
            f.write(f"{qid} Q0 {pid} {r} {-float(r):.1f} msmarco-top1000\n")
            lines += 1
    if queries_out is not None:
        with atomic_open(queries_out) as f:
            f.writelines(f"{q}\t{t}\n" for q, t in texts.items())
    return len(ranks), lines


def triples_to_lists(path: str | Path, out: str | Path, max_negatives: int = 32,
                     known: Corpus | None = None) -> dict[str, int]:
    """Training lists from MS MARCO's id triples (``qidpidtriples.train.full.tsv``: qid, positive pid,
    negative pid): per query its positives and its first ``max_negatives`` distinct negatives, in
    file order (the official BM25 hard negatives), written as training lists (JSON lines,
    :mod:`tandem.train.lists`).

    Memory holds up to ``max_negatives`` ids per training query (about 1 GB for the 400k queries
    of the full file at 32). With ``known`` (the collection), ids it lacks are counted and dropped.
    Returns counts: lists, triples, negatives_capped, unknown.
    """
    import json

    from tandem.io import atomic_open

    pos: dict[str, list[str]] = {}
    neg: dict[str, list[str]] = {}
    counts = {"triples": 0, "negatives_capped": 0, "unknown": 0}
    for _, cols in _rows(path, 3, "qid, positive pid, negative pid"):
        qid, p, n = (c.strip() for c in cols)
        counts["triples"] += 1
        if known is not None and (p not in known or n not in known):
            counts["unknown"] += 1
            continue
        ps = pos.setdefault(qid, [])
        if p not in ps:
            ps.append(p)
        ns = neg.setdefault(qid, [])
        if n in ns or n in ps:
            continue
        if len(ns) >= max_negatives:
            counts["negatives_capped"] += 1
            continue
        ns.append(n)
    counts["lists"] = 0
    with atomic_open(out) as f:
        for qid, ps in pos.items():
            ns = [n for n in neg.get(qid, []) if n not in ps]  # a negative that is another triple's positive
            if not ns:
                continue
            f.write(json.dumps({"qid": qid, "positives": [{"pid": p} for p in ps],
                                "negatives": [{"pid": n, "rank": r, "source": "msmarco-bm25"}
                                              for r, n in enumerate(ns, start=1)]}) + "\n")
            counts["lists"] += 1
    return counts
