"""Near copies of a labelled positive: never negatives, whatever a re-ranker scores them."""

from __future__ import annotations

import re


class NearCopies:
    """Which candidates nearly copy one of a query's labelled positives: word-set Jaccard >= ``threshold``
    (lower-cased words of title and text). Such a passage is an unlabelled positive, whatever a re-ranker
    scores it; as a negative it would be the false negative denoising exists to remove."""

    def __init__(self, corpus, threshold: float):
        self.corpus, self.threshold = corpus, threshold
        self._words: dict[str, frozenset[str]] = {}

    def words(self, pid: str) -> frozenset[str]:
        if pid not in self._words:
            self._words[pid] = frozenset(re.findall(r"\w+", self.corpus.text(pid).lower()))
        return self._words[pid]

    def of(self, candidates: list[str], labelled: list[str]) -> set[str]:
        if not self.threshold:
            return set()
        out = set()
        for pid in candidates:
            a = self.words(pid)
            for pos in labelled:
                b = self.words(pos)
                small, big = sorted((len(a), len(b)))
                if big and small / big >= self.threshold and len(a & b) / len(a | b) >= self.threshold:
                    out.add(pid)  # the size ratio bounds the Jaccard from above: most pairs stop there
                    break
        return out
