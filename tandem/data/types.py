"""In-memory containers for corpora, queries, qrels and runs.

A corpus of millions of passages must not cost more than its text: :class:`Corpus` packs all
texts into one UTF-8 buffer with an offsets array, and keeps only the ids as Python strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from tandem.errors import UnknownIdError

Qrels = dict[str, dict[str, int]]  # qid -> pid -> relevance
Run = dict[str, dict[str, float]]  # qid -> pid -> score


class Corpus(Sequence[str]):
    """Passages as ``ids`` plus texts packed into one UTF-8 buffer.

    ``corpus[i]`` is the i-th passage text (title and text joined as BEIR does);
    ``corpus.text(pid)`` looks a passage up by id.
    """

    def __init__(self, ids: list[str], buffer: bytes | bytearray, offsets: np.ndarray,
                 titles: np.ndarray | None = None):
        # offsets: (N + 1,) int64 byte offsets into buffer; titles: (N,) byte length of the title part
        if len(offsets) != len(ids) + 1:
            raise ValueError("offsets must have one entry more than ids")
        self.ids = ids
        self._buf = buffer
        self._off = offsets
        self._title_len = titles
        self._index: dict[str, int] | None = None

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, str, str]]) -> "Corpus":
        """Build from ``(pid, title, text)`` triples, streaming."""
        ids: list[str] = []
        buf = bytearray()
        offsets = [0]
        title_lens = []
        for pid, title, text in records:
            ids.append(pid)
            t = title.encode("utf-8")
            body = join_title(title, text).encode("utf-8")
            buf += body
            offsets.append(len(buf))
            title_lens.append(len(t) if title else 0)
        return cls(ids, buf, np.asarray(offsets, dtype=np.int64), np.asarray(title_lens, dtype=np.int64))

    def concat(self, other: "Corpus") -> "Corpus":
        """This corpus followed by ``other`` (a new object; the texts are copied once, not re-encoded)."""
        buf = bytearray(self._buf)
        buf += other._buf
        offsets = np.concatenate([self._off, other._off[1:] + len(self._buf)]).astype(np.int64)
        mine = self._title_len if self._title_len is not None else np.zeros(len(self), dtype=np.int64)
        theirs = other._title_len if other._title_len is not None else np.zeros(len(other), dtype=np.int64)
        return Corpus(self.ids + other.ids, buf, offsets, np.concatenate([mine, theirs]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._buf[self._off[i] : self._off[i + 1]].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    @property
    def index(self) -> dict[str, int]:
        """pid -> position, built on first use."""
        if self._index is None:
            self._index = {pid: i for i, pid in enumerate(self.ids)}
        return self._index

    def __contains__(self, pid: object) -> bool:
        return pid in self.index

    def text(self, pid: str) -> str:
        try:
            return self[self.index[pid]]
        except KeyError:
            raise UnknownIdError(f"passage id {pid!r} is not in the corpus ({len(self)} passages)") from None

    def body(self, i: int) -> str:
        """Passage ``i`` without its title."""
        full, title = self[i], self.title(i).strip()
        return full[len(title):].lstrip() if title and full.startswith(title) else full

    def title(self, i: int) -> str:
        """The title part of passage ``i`` ('' when it has none)."""
        if self._title_len is None:
            return ""
        start = self._off[i]
        return self._buf[start : start + self._title_len[i]].decode("utf-8")

    @property
    def nbytes(self) -> int:
        return len(self._buf) + self._off.nbytes


def join_title(title: str, text: str) -> str:
    """Passage text as BEIR's dense evaluation builds it: title, a space, then the text."""
    title = title.strip()
    return f"{title} {text}".strip() if title else text.strip()


@dataclass
class Dataset:
    """A retrieval dataset: corpus, queries and the qrels of one split."""

    corpus: Corpus
    queries: dict[str, str]
    qrels: Qrels = field(default_factory=dict)
    name: str = ""
    split: str | None = None

    def split_queries(self) -> dict[str, str]:
        """The queries that have judgments in this split, in qrels order."""
        return {qid: self.queries[qid] for qid in self.qrels if qid in self.queries}


def count_missing(qrels: Mapping[str, Mapping[str, int]], queries: Mapping[str, str], corpus: Corpus) -> tuple[int,
                                                                                                               int]:
    """Number of qrels rows whose query, and whose passage, are unknown."""
    missing_q = sum(len(d) for q, d in qrels.items() if q not in queries)
    idx = corpus.index
    missing_p = sum(1 for d in qrels.values() for p in d if p not in idx)
    return missing_q, missing_p
