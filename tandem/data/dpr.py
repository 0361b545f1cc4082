"""Natural Questions in the DPR format (its answer-hit top-k accuracy is in :mod:`tandem.eval.answers`).

Files as distributed by facebookresearch/DPR:
- ``psgs_w100.tsv``: ``id<TAB>text<TAB>title`` with a header line (21M Wikipedia passages);
- ``nq-{train,dev,test}.qa.csv``: ``question<TAB>['answer', ...]`` (no header);
- ``nq-train.json``: a JSON array of ``{"question", "answers", "positive_ctxs", "negative_ctxs",
  "hard_negative_ctxs"}``, contexts ``{"title", "text", "passage_id"|"psg_id", "score"?}``.

All are streamed (the training JSON too, item by item) and name file:line on errors.
Accuracy@k counts a query as answered when one of its top-k passages contains an answer string
after DPR's normalisation: Unicode NFD, lower case, tokens of letters/digits/marks or single other
non-space characters, matched as a contiguous token sequence.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Iterator

from tandem.data.types import Corpus
from tandem.errors import DataFormatError
from tandem.io import open_text


def iter_psgs_tsv(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Stream ``(pid, title, text)`` from DPR's ``psgs_w100.tsv``."""
    with open_text(path) as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header[:3] != ["id", "text", "title"]:
            raise DataFormatError(path, f"expected the header 'id<TAB>text<TAB>title', found {header!r}", 1)
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataFormatError(path, f"expected 3 tab-separated columns (id, text, title), found {len(cols)}",
                                      lineno)
            pid, text, title = cols
            if not pid.strip():
                raise DataFormatError(path, "empty passage id", lineno)
            yield pid.strip(), _unquote(title), _unquote(text)


def _unquote(s: str) -> str:
    # psgs_w100.tsv quotes fields that contain quotes, CSV-style
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1].replace('""', '"')
    return s


def load_psgs(path: str | Path) -> Corpus:
    return Corpus.from_records(iter_psgs_tsv(path))


def load_qas(path: str | Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Questions and answers from a DPR ``*.qa.csv``; query ids are the 0-based line numbers."""
    queries: dict[str, str] = {}
    answers: dict[str, list[str]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            question, sep, raw = line.rpartition("\t")
            if not sep or not question.strip():
                raise DataFormatError(path, "expected question<TAB>['answer', ...]", lineno)
            try:
                ans = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise DataFormatError(path, f"answers are not a Python list literal: {raw[:60]!r}", lineno) from None
            if not isinstance(ans, list) or not all(isinstance(a, str) for a in ans):
                raise DataFormatError(path, "answers must be a list of strings", lineno)
            qid = str(lineno - 1)
            queries[qid], answers[qid] = question.strip(), ans
    return queries, answers


def iter_json_array(path: str | Path, chunk: int = 1 << 20) -> Iterator[tuple[int, dict]]:
    """Stream the items of a top-level JSON array ``[{...}, {...}]`` with the line each starts on."""
    decoder = json.JSONDecoder()
    with open_text(path) as f:
        buf, pos, line, eof = "", 0, 1, False

        def fill() -> bool:
            nonlocal buf, pos
            data = f.read(chunk)
            buf = buf[pos:] + data
            pos = 0
            return bool(data)

        def skip_ws() -> None:
            nonlocal pos, line, eof
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or eof:
                    return
                eof = not fill()

        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise DataFormatError(path, "expected a JSON array of training examples", line)
        pos += 1
        while True:
            skip_ws()
            if pos < len(buf) and buf[pos] == "]":
                return
            if pos >= len(buf):
                raise DataFormatError(path, "the JSON array is not closed", line)
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if eof:
                        raise DataFormatError(path, f"invalid JSON: {e.msg}", line + buf.count("\n", pos,
                                                                                               e.pos)) from None
                    eof = not fill()
            if not isinstance(obj, dict):
                raise DataFormatError(path, "each training example must be a JSON object", line)
            yield line, obj
            line += buf.count("\n", pos, end)
            pos = end
            skip_ws()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1


def _ctx_id(ctx: dict, path, lineno: int) -> str:
    for key in ("passage_id", "psg_id", "id"):
        if key in ctx:
            return str(ctx[key])
    raise DataFormatError(path, "a context without passage_id/psg_id (needed to look its text up)", lineno)


def iter_dpr_training(path: str | Path) -> Iterator[dict]:
    """DPR training examples as training-list records (``tandem.train.lists`` format).

    Query ids are the 0-based positions in the file; the question text travels in the record.
    Hard negatives become ``source: "bm25"`` (DPR mined them with BM25), other negatives ``random``.
    """
    for i, (lineno, ex) in enumerate(iter_json_array(path)):
        if "question" not in ex:
            raise DataFormatError(path, 'training example without "question"', lineno)
        pos = [{"pid": _ctx_id(c, path, lineno)} for c in ex.get("positive_ctxs", [])]
        negs = [{"pid": _ctx_id(c, path, lineno), "source": "bm25"} for c in ex.get("hard_negative_ctxs", [])]
        negs += [{"pid": _ctx_id(c, path, lineno), "source": "random"} for c in ex.get("negative_ctxs", [])]
        yield {"qid": str(i), "query": ex["question"], "answers": ex.get("answers", []), "positives": pos,
               "negatives": negs}


__all__ = ["iter_psgs_tsv", "load_psgs", "load_qas", "iter_json_array", "iter_dpr_training"]


def __getattr__(name: str):
    """DPR's answer metric lives in :mod:`tandem.eval.answers`; still importable from here."""
    if name in ("answer_tokens", "has_answer", "answer_accuracy"):
        from tandem.eval import answers

        return getattr(answers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
