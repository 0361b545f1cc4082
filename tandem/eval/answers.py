"""DPR's answer-hit top-k retrieval accuracy (``Acc@k``), for questions judged by answer strings, not qrels.

A query counts as answered when one of its top-k passages contains an answer string after DPR's
normalisation (its SimpleTokenizer): Unicode NFD, lower case, tokens of letters/digits/marks or single
other non-space characters, matched as a contiguous token sequence.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Mapping, Sequence

from tandem.data.types import Corpus


@lru_cache(maxsize=1)
def _token_re():
    import regex

    return regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


def answer_tokens(text: str) -> list[str]:
    """DPR's normalised tokens: NFD, lower case, runs of letters/digits/marks or one other symbol."""
    return [m.group().lower() for m in _token_re().finditer(unicodedata.normalize("NFD", text))]


def has_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether any answer occurs in ``text`` as a contiguous sequence of normalised tokens."""
    tokens = answer_tokens(text)
    for answer in answers:
        a = answer_tokens(answer)
        if not a:
            continue
        for i in range(len(tokens) - len(a) + 1):
            if tokens[i : i + len(a)] == a:
                return True
    return False


def answer_accuracy(run: Mapping[str, Mapping[str, float]], answers: Mapping[str, Sequence[str]], corpus: Corpus,
                    ks: Sequence[int] = (5, 20, 100)) -> dict[str, float]:
    """Top-k retrieval accuracy (``Acc@k``): share of questions with an answer in their top-k passages.

    Questions without a run entry count as misses; the run's queries not in ``answers`` are ignored.
    """
    from tandem.data.trec import ranked

    first_hit: list[int | None] = []
    for qid, ans in answers.items():
        depth = None
        for r, (pid, _) in enumerate(ranked(dict(run.get(qid, {})), max(ks)), start=1):
            if has_answer(corpus.body(corpus.index[pid]), ans):  # DPR matches the text, not the title
                depth = r
                break
        first_hit.append(depth)
    n = max(len(first_hit), 1)
    return {f"Acc@{k}": sum(1 for d in first_hit if d is not None and d <= k) / n for k in ks}


__all__ = ["answer_tokens", "has_answer", "answer_accuracy"]
