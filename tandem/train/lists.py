"""Training lists: one query, its positives and a pool of negatives (the file ``tandem mine``
writes and ``tandem train --lists`` reads).

On disk, JSON lines: ``{"qid", "query"?, "positives": [PositiveEntry], "negatives": [NegativeEntry]}`` (the
entries' keys below); texts are looked up in the corpus. The trainer
draws one positive and ``m`` negatives per list each epoch from ``seed`` + epoch + list index,
so a run replays (and resumes) without storing the samples.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TypedDict

import numpy as np

from tandem.data.types import Corpus, Qrels, Run
from tandem.errors import DataFormatError, UsageError
from tandem.io import atomic_open, iter_jsonl

log = logging.getLogger(__name__)


# the negatives' sources that mining writes: the two pools of RocketQAv2's hybrid lists
UNDENOISED, DENOISED = "undenoised", "denoised"


class _Entry(TypedDict):
    pid: str  # a passage id of the corpus (every entry has one)


class PositiveEntry(_Entry, total=False):
    """A positive of a training list: a labelled one (``pid`` alone) or a pseudo-positive."""

    pseudo: bool  # an unlabelled candidate the denoiser scored clearly relevant (tandem mine)
    score: float  # pseudo: the denoiser's calibrated probability
    rank: int  # its first-stage rank among the query's candidates (a pseudo-positive's always; a labelled one's
    # where the first stage retrieved it: positive_pool=retrieved draws from those)


class NegativeEntry(_Entry, total=False):
    """A negative of a training list."""

    source: str  # its pool: UNDENOISED or DENOISED (tandem mine; the sampler draws denoised_share from the
    # second), else where the list file got it ("bm25", "random", "msmarco-bm25", a run's name): undenoised
    rank: int  # its first-stage rank
    score: float  # its first-stage score
    ce: float  # the denoiser's calibrated probability, where it scored the candidate


@dataclass
class TrainingList:
    qid: str
    positives: list[PositiveEntry]
    negatives: list[NegativeEntry]
    query: str | None = None

    def to_json(self) -> dict:
        out: dict = {"qid": self.qid}
        if self.query is not None:
            out["query"] = self.query
        out["positives"] = self.positives
        out["negatives"] = self.negatives
        return out


def labelled_positives(pids: Iterable[str], rank_of: Mapping[str, int]) -> list[PositiveEntry]:
    """A query's labelled positives as list entries, each with its first-stage ``rank`` where ``rank_of`` (the
    candidates' pid -> rank) has it: what ``positive_pool=retrieved`` draws from."""
    return [{"pid": p, **({"rank": rank_of[p]} if p in rank_of else {})} for p in pids]


def write_lists(path: str | Path, lists: Iterable[TrainingList]) -> None:
    import json

    with atomic_open(path) as f:
        for lst in lists:
            f.write(json.dumps(lst.to_json()) + "\n")


def _entries(obj: dict, key: str, path, lineno: int) -> list[dict]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise DataFormatError(path, f'"{key}" must be a list', lineno)
    out = []
    for e in value:
        if isinstance(e, (str, int)):
            e = {"pid": str(e)}
        if not isinstance(e, dict) or "pid" not in e:
            raise DataFormatError(path, f'each entry of "{key}" needs a "pid"', lineno)
        out.append({**e, "pid": str(e["pid"])})
    return out


def read_lists(path: str | Path, corpus: Corpus, queries: Mapping[str, str]) -> list[TrainingList]:
    """Read and validate training lists against the corpus and queries.

    Raises:
        DataFormatError: malformed line, unknown query, unknown passage ids, a list without positive
            or without negatives (the message gives the first offending line and the total count).
    """
    lists: list[TrainingList] = []
    problems: dict[str, list[int]] = {}
    for lineno, obj in iter_jsonl(path):
        if "qid" not in obj:
            raise DataFormatError(path, 'missing "qid"', lineno)
        qid = str(obj["qid"])
        pos, neg = _entries(obj, "positives", path, lineno), _entries(obj, "negatives", path, lineno)
        if qid not in queries and not obj.get("query"):
            problems.setdefault(f"query id {qid!r} is not in queries.jsonl and the line has no \"query\"",
                                []).append(lineno)
        unknown = [e["pid"] for e in pos + neg if e["pid"] not in corpus]
        if unknown:
            problems.setdefault("passage ids not in the corpus (first: %r)" % unknown[0], []).append(lineno)
        if not pos:
            problems.setdefault("list has no positive", []).append(lineno)
        if not neg:
            problems.setdefault("list has no negatives", []).append(lineno)
        lists.append(TrainingList(qid, pos, neg, obj.get("query")))
    if problems:
        parts = [f"{msg}: {len(lines)} lists, first on line {lines[0]}" for msg, lines in problems.items()]
        raise DataFormatError(path, "; ".join(parts) + ". Were the lists built for this dataset?",
                              problems[next(iter(problems))][0])
    return lists


def lists_from_run(run: Run, qrels: Qrels, corpus: Corpus, top_n: int = 50, source: str = "undenoised",
                   queries: Mapping[str, str] | None = None) -> list[TrainingList]:
    """Lists from a first-stage run: qrels positives, and the run's top-``n`` minus positives as negatives.

    Queries without a positive in the corpus or without any negative are counted and left out.
    """
    from tandem.data.trec import ranked

    lists, no_pos, no_neg = [], 0, 0
    for qid, judged in qrels.items():
        if queries is not None and qid not in queries:
            continue
        positives = [p for p, r in judged.items() if r > 0 and p in corpus]
        if not positives:
            no_pos += 1
            continue
        pos_set = set(positives)
        top = list(enumerate(ranked(run.get(qid, {}), top_n), start=1))
        negs = [{"pid": p, "score": s, "rank": r, "source": source} for r, (p, s) in top if p not in pos_set]
        if not negs:
            no_neg += 1
            continue
        lists.append(TrainingList(qid, labelled_positives(positives, {p: r for r, (p, _) in top}), negs))
    if no_pos or no_neg:
        log.warning("lists: %d queries left out with no positive in the corpus, %d with no negative in the run",
                    no_pos, no_neg)
    return lists


@dataclass
class Group:
    """One sampled list: a query and G passages, positive first."""

    qid: str
    query: str
    pids: list[str]


HELDOUT_SALT = "tandem-heldout"  # the held-out draw of `tandem train` and `tandem mine` unless told otherwise


def heldout_salt(seed: int | None) -> str:
    """The salt of a run's held-out draw: one per seed (a recipe's seeds then validate on different queries, so
    their spread includes the draw's), or the fixed :data:`HELDOUT_SALT` for ``None``."""
    return HELDOUT_SALT if seed is None else f"{HELDOUT_SALT}-seed{seed}"


def qid_unit(qid: str, salt: str = HELDOUT_SALT) -> float:
    """A query id's fixed place in [0, 1) for one purpose (``salt``): the held-out split keys on it, and fixed
    subsets (validation, budgeted denoising) take the queries in its order."""
    digest = hashlib.sha256(f"{salt}:{qid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def first_by_hash(qids: Iterable[str], n: int, salt: str = HELDOUT_SALT) -> list[str]:
    """The ``n`` queries that come first in the order of ``qid_unit(qid, salt)``: a fixed subset whatever the order
    or count of ``qids``."""
    return sorted(qids, key=lambda q: qid_unit(q, salt))[:n]


def heldout_qids(qids: Iterable[str], fraction: float, salt: str = HELDOUT_SALT) -> set[str]:
    """The queries held out for evaluation: those whose id hashes (with ``salt``) below ``fraction``.

    The choice depends on each query id alone, not on the list order or count, so mining, training
    and the recipe's validation agree on it whatever subset of queries each of them sees. Where the
    hash holds out none or all (a handful of queries), the ``round(fraction * n)`` smallest hashes
    are held out instead (at least one, never all).
    """
    qids = list(dict.fromkeys(qids))
    if fraction <= 0 or len(qids) < 2:
        return set()
    held = {q for q in qids if qid_unit(q, salt) < fraction}
    if not held or len(held) == len(qids):
        k = min(max(1, round(fraction * len(qids))), len(qids) - 1)
        held = set(first_by_hash(qids, k, salt))
    return held


def heldout_indices(qids: Sequence[str], fraction: float, salt: str = HELDOUT_SALT) -> list[int]:
    """Indices (into ``qids``, e.g. one per training list) of the held-out queries' entries."""
    held = heldout_qids(qids, fraction, salt)
    return [i for i, q in enumerate(qids) if q in held]


@dataclass
class ListSampler:
    """Draws groups of ``1 + negatives`` passages per list, deterministically from seed, epoch and index.

    Negatives come from the list's pools: entries with ``source == "denoised"`` form the denoised
    pool, all others the undenoised one. Where a list has both, ``round(denoised_share * m)`` are
    drawn from the denoised pool and the rest from the undenoised one (no passage twice while
    enough distinct ones remain). The positive is a pseudo-positive with ``pseudo_positive_prob``
    where the list has some (always, if it has no labelled one); ``labelled_only`` ignores them
    (held-out evaluation). With ``retrieved_positives`` a labelled positive is drawn from those the first stage
    retrieved among the candidates (a ``rank`` in the lists file) where the list has any: a dataset with dozens of
    graded positives a query (NFCorpus: 43, 4 of them in the top-20) otherwise mostly pairs a positive that both
    models rank below every negative with the top candidates.
    """

    lists: list[TrainingList]
    queries: Mapping[str, str]
    negatives: int
    seed: int = 0
    denoised_share: float = 0.5
    pseudo_positive_prob: float = 0.25
    labelled_only: bool = False
    retrieved_positives: bool = False
    short_lists: int = field(default=0, init=False)

    def __post_init__(self):
        if self.negatives < 1:
            raise UsageError(f"a list needs at least one negative; list size {self.negatives + 1}")
        self.short_lists = sum(1 for lst in self.lists if len({e["pid"] for e in lst.negatives}) < self.negatives)
        if self.short_lists:
            log.warning("%d of %d lists have fewer than %d distinct negatives; their negatives are drawn with "
                        "replacement", self.short_lists, len(self.lists), self.negatives)
        if self.labelled_only and any(not [e for e in lst.positives if not e.get("pseudo")] for lst in self.lists):
            raise UsageError("held-out lists need a labelled (not pseudo) positive each")
        if self.retrieved_positives and self.lists and not any(
                "rank" in e for lst in self.lists for e in lst.positives if not e.get("pseudo")):
            raise UsageError("positive_pool=retrieved: no labelled positive in these lists has a first-stage rank "
                             "(lists mined before tandem recorded them): mine the lists again")

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.lists))

    def _positive(self, lst: TrainingList, rng: np.random.Generator) -> str:
        labelled = [e for e in lst.positives if not e.get("pseudo")]
        if self.retrieved_positives:
            labelled = [e for e in labelled if "rank" in e] or labelled
        pseudo = [e for e in lst.positives if e.get("pseudo")]
        if not pseudo or (labelled and self.labelled_only):
            pool = labelled
        elif not labelled:
            pool = pseudo
        else:
            pool = pseudo if rng.random() < self.pseudo_positive_prob else labelled
        return pool[int(rng.integers(len(pool)))]["pid"]

    def query(self, i: int) -> str:
        lst = self.lists[i]
        return lst.query if lst.query is not None else self.queries[lst.qid]

    def group(self, epoch: int, i: int) -> Group:
        lst = self.lists[i]
        rng = np.random.default_rng([self.seed, epoch, i, 7])
        pos = self._positive(lst, rng)
        query = self.query(i)
        denoised = [e["pid"] for e in lst.negatives if e.get("source") == DENOISED and e["pid"] != pos]
        undenoised = [e["pid"] for e in lst.negatives if e.get("source") != DENOISED and e["pid"] != pos]
        if self.denoised_share >= 1 and denoised:  # one pool: the share asks for it, or the other is empty
            pool = denoised
        elif (self.denoised_share <= 0 or not denoised) and undenoised:
            pool = undenoised
        elif not undenoised:
            pool = denoised or [e["pid"] for e in lst.negatives]
        else:
            pool = None
        if pool is not None:
            picks = rng.choice(len(pool), size=self.negatives, replace=len(set(pool)) < self.negatives)
            return Group(lst.qid, query, [pos] + [pool[int(j)] for j in picks])
        n_den = min(int(round(self.denoised_share * self.negatives)), len(denoised))
        chosen = [denoised[int(j)] for j in rng.choice(len(denoised), size=n_den, replace=False)]
        taken = set(chosen)
        rest = [p for p in undenoised if p not in taken]
        need = self.negatives - n_den
        if len(rest) >= need:
            chosen += [rest[int(j)] for j in rng.choice(len(rest), size=need, replace=False)]
        else:  # too few distinct passages left: repeat from both pools
            both = denoised + undenoised
            chosen += rest + [both[int(j)] for j in rng.choice(len(both), size=need - len(rest))]
        return Group(lst.qid, query, [pos] + chosen)
