"""TREC run files (``qid Q0 pid rank score tag``) and qrels (TREC or BEIR TSV), read and written."""

from __future__ import annotations

from pathlib import Path

from tandem.data.types import Qrels, Run
from tandem.errors import DataFormatError
from tandem.io import atomic_open, open_text


def read_run(path: str | Path) -> Run:
    """Read a 6-column TREC run. Scores decide the order; ranks are only checked for form."""
    run: Run = {}
    n = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cols = line.split()
            if len(cols) != 6:
                raise DataFormatError(path, f"expected 6 columns (qid Q0 docid rank score tag), found {len(cols)}",
                                      lineno)
            qid, _, pid, rank, score, _ = cols
            try:
                int(rank)
                value = float(score)
            except ValueError:
                raise DataFormatError(path, f"rank must be an integer and score a number, found {rank!r} and {score!r}",
                                      lineno) from None
            docs = run.setdefault(qid, {})
            if pid in docs:
                raise DataFormatError(path, f"passage {pid!r} appears twice for query {qid!r}", lineno)
            docs[pid] = value
            n += 1
    if n == 0:
        raise DataFormatError(path, "file is empty: expected TREC run lines")
    return run


def ranked(docs: dict[str, float], k: int | None = None) -> list[tuple[str, float]]:
    """Passages sorted by score (descending), ties broken by id for a stable order."""
    items = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
    return items if k is None else items[:k]


def write_run(path: str | Path, run: Run, tag: str = "tandem", k: int | None = None) -> None:
    """Write a TREC run atomically, each query's passages ranked by score."""
    with atomic_open(path) as f:
        for qid, docs in run.items():
            for rank, (pid, score) in enumerate(ranked(docs, k), start=1):
                f.write(f"{qid} Q0 {pid} {rank} {score:.6f} {tag}\n")


def write_qrels(path: str | Path, qrels: Qrels) -> None:
    """Write TREC 4-column qrels atomically."""
    with atomic_open(path) as f:
        for qid, docs in qrels.items():
            for pid, rel in docs.items():
                f.write(f"{qid} 0 {pid} {rel}\n")


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
