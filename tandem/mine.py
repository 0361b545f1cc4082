"""``tandem mine``: RocketQAv2's hybrid data augmentation (lists that mix undenoised hard negatives with
denoised ones, plus pseudo-positives).

Mine candidates for every training query, denoise them with a re-ranker, write list pools:

1. retrieve: the top-n of a dense retriever, BM25, or both merged by reciprocal rank fusion.
   ``candidates.jsonl`` grows one line per query, so a killed run continues where it stopped.
2. warm-up (optional): a re-ranker trained on the undenoised lists (``--mode reranker``), for
   when no trained cross-encoder is at hand.
3. score: the re-ranker's logit for each candidate (the first ``denoise_top``; every candidate of a
   calibration query); ``scores.jsonl``, one line per query, resumable the same way.
4. calibrate: probabilities ``sigmoid(a * logit + b)``, with ``(a, b)`` fitted on the candidates of
   held-out training queries, labelled positives against the rest (``platt``), or ``a = 1, b = 0``
   (``sigmoid``, for a cross-encoder trained with BCE). Calibrated on the pool the lists draw from,
   a probability is what denoising needs: how likely a candidate there is a positive.
5. lists: per query, the labelled positives plus pseudo-positives (probability > ``high``), the
   undenoised pool (every candidate but the labelled positives) and the denoised pool
   (probability < ``low``, or ranked below ``low_rank`` by the re-ranker). Labelled positives
   are never negatives. The trainer draws from the pools each epoch (``denoised_share``,
   ``pseudo_positive_prob``). Written atomically, with a report (Markdown + JSON) beside.

Work files live in ``<LISTS>.mine/`` with a ``manifest.json`` of the settings each was made
with: a file made with other settings is discarded and redone, never mixed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from tandem.data.types import Dataset
from tandem.errors import ConfigError, IncompatibleArtifactError, UsageError
from tandem.io import atomic_open, manifest, read_json, write_json
from tandem.settings import setting as _f
from tandem.utils import progress_bar

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class MineSettings:
    top_n: int = _f(50, "candidates kept per training query")
    dense: bool = _f(True, "retrieve with the dense retriever")
    bm25: bool = _f(False, "retrieve with BM25 (with dense too: merged by reciprocal rank fusion)")
    bm25_stemmer: str = _f("english", "BM25's Snowball stemmer (PyStemmer), or none")
    split: str = _f("train", "qrels split of the training queries")
    denoise_by: str = _f("prob", "prob: thresholds on calibrated probabilities; rank: cuts on the re-ranker's ranks")
    low: float = _f(0.1, "prob mode: candidates below this probability are denoised negatives")
    high: float = _f(0.9, "prob mode: candidates above this probability become pseudo-positives")
    low_from_positives: float = _f(0.0, "prob mode, if > 0: set low to this quantile of the held-out labelled "
                                        "positives' probabilities (e.g. 0.1: at most ~10% of real positives would "
                                        "fall in the denoised pool)")
    high_from_precision: float = _f(0.0, "prob mode, if > 0: lower high to the least probability above which the "
                                         "held-out candidates are labelled positives at this share at least (e.g. "
                                         "0.75; from the top, over at least 5 of them; never below low or 0.5): "
                                         "pseudo-positives where the denoiser is that often right on held-out "
                                         "queries, whose labels miss some positives besides")
    low_rank: int = _f(10, "rank mode: candidates the re-ranker ranks below this are denoised negatives")
    high_rank: int = _f(0, "rank mode: the re-ranker's top-k candidates (not labelled) become pseudo-positives")
    calibration: str = _f("platt", "platt: sigmoid(a*logit+b) fitted on held-out labelled pairs; sigmoid: a=1, b=0")
    calibration_fraction: float = _f(0.1, "share of training queries whose labelled pairs fit the calibration")
    calibration_pool: str = _f("candidates", "what calibrates the denoiser: candidates (each calibration query's "
                                             "whole candidate list, its labelled positives there against the rest: "
                                             "the pool the lists draw from) or positives (its scored candidates "
                                             "plus up to calibration_positives labelled positives from anywhere, "
                                             "the earlier way: positives the first stage missed score low, and "
                                             "NFCorpus then calibrated to AUC 0.33 instead of 0.73)")
    calibration_positives: int = _f(5, "calibration_pool positives: labelled positives per calibration query scored "
                                       "beyond its candidates at most (the first in the qrels; 0: all): NFCorpus has "
                                       "~40 a query")
    calibration_max_queries: int = _f(0, "calibration queries at most (the held-out ones in the order of a hash of "
                                         "the id; 0: all): each costs its candidates and up to calibration_positives "
                                         "more pairs, ~100 s of the demo's 14 minutes for NFCorpus's 259")
    denoise_top: int = _f(0, "score only each query's first k candidates (0: all); the rest stay undenoised")
    max_pseudo: int = _f(3, "pseudo-positives per query at most (the most probable)")
    near_copy: float = _f(0.8, "a candidate whose word set overlaps a labelled positive's by at least this Jaccard "
                               "is a near copy of it: never a negative, in either pool (0: off)")
    denoise_depth: int = _f(0, "a query none of whose scored candidates is a denoised negative has the first "
                               "stage's next candidates scored, top_n at a time, down to this rank, until one is (0: "
                               "off): its denoised pool then holds those below low (RocketQA denoised the top-50 to "
                               "100); the undenoised pool stays the top_n. NFCorpus's demo (seed 1): 63% -> 93% of the "
                               "training lists hybrid at 100")
    denoise_queries: int = _f(0, "with a re-ranker: denoise only this many training queries (the held-out calibration "
                                 "queries, then the rest in the order of a hash of the id) and write the lists of "
                                 "those alone, for a training budget that sees only a part of the queries (0: all)")
    query_batch: int = _f(256, "queries retrieved per chunk (bounded memory; one resumable write each)")
    rerank_batch: int = _f(32, "pairs per re-ranker batch")
    samples: int = _f(20, "examples of each kind in the report")
    seed: int = _f(1234, "seed of the report's samples")

    def check(self) -> None:
        problems = [msg for ok, msg in [
            (self.dense or self.bm25, "mine needs a first stage: dense, bm25 or both"),
            (self.top_n >= 1, "top_n must be >= 1"),
            (self.denoise_by in ("prob", "rank"), "denoise_by must be prob or rank"),
            (self.calibration in ("platt", "sigmoid"), "calibration must be platt or sigmoid"),
            (self.calibration_pool in ("candidates", "positives"), "calibration_pool must be candidates or positives"),
            (0.0 <= self.low <= self.high <= 1.0 or self.high > 1.0,
             "need 0 <= low <= high (high > 1: no pseudo-positives)"),
            (0.0 < self.calibration_fraction < 1.0, "calibration_fraction must be in (0, 1)"),
            (0.0 <= self.low_from_positives < 1.0, "low_from_positives must be in [0, 1)"),
            (0.0 <= self.high_from_precision < 1.0, "high_from_precision must be in [0, 1)"),
            (self.denoise_queries >= 0, "denoise_queries must be >= 0"),
            (self.calibration_positives >= 0, "calibration_positives must be >= 0"),
            (0.0 <= self.near_copy <= 1.0, "near_copy must be in [0, 1]"),
            (self.denoise_depth == 0 or self.denoise_depth > self.top_n,
             "denoise_depth must be 0 (off) or deeper than top_n"),
            (self.denoise_depth == 0 or self.denoise_by == "prob", "denoise_depth needs denoise_by prob"),
        ] if not ok]
        if problems:
            raise ConfigError("; ".join(problems))

    def retrieval_key(self) -> dict:
        key = {"top_n": self.top_n, "dense": self.dense, "bm25": self.bm25, "split": self.split}
        if self.bm25:
            from tandem.index.bm25 import stemmer_name

            stem = stemmer_name(self.bm25_stemmer)
            key.update({"bm25_stemmer": stem} if stem else {})  # unstemmed: the key of candidates mined before
        return key


@dataclass
class MineResult:
    lists: Path
    report: dict[str, Any]


# ---- resumable line files ---------------------------------------------------------------------
def done_qids(path: Path) -> set[str]:
    """Query ids of the complete lines of a growing JSON-lines file; a torn last line is cut off.

    Streams the file (bounded memory for any size); lines written here start with their ``qid``.
    """
    if not path.exists():
        return set()
    qids: set[str] = set()
    good = 0  # bytes up to the end of the last complete line
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            good += len(line)
            if line.strip():
                m = _QID.match(line)
                qids.add(json.loads(m.group(1)) if m else json.loads(line)["qid"])
    size = path.stat().st_size
    if good < size:  # killed mid-write: drop the partial line, it is redone
        with open(path, "r+b") as f:
            f.truncate(good)
        log.info("%s: cut a partial last line (%d bytes) left by an interrupted run", path, size - good)
    return qids


_QID = re.compile(rb'\{"qid": ("(?:[^"\\]|\\.)*")')  # the qid opens every line this module writes


def iter_lines(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _append(f, records: list[dict]) -> None:
    f.write("".join(json.dumps(r) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---- 1. retrieval -----------------------------------------------------------------------------
def merge_rrf(runs: Mapping[str, Mapping[str, float]], top_n: int) -> list[dict]:
    """One ranked candidate list from several first stages' results for a query.

    Each candidate records its rank and score in every stage that found it; with one stage the
    order is that stage's, with several it is reciprocal rank fusion (sum of 1 / (60 + rank)).
    """
    from tandem.data.trec import ranked
    from tandem.index.fusion import rrf_scores

    per: dict[str, dict] = {}
    for name, docs in runs.items():
        for r, (pid, s) in enumerate(ranked(dict(docs)), start=1):
            e = per.setdefault(pid, {"pid": pid})
            e[f"{name}_rank"], e[f"{name}_score"] = r, round(float(s), 5)
    for pid, f in rrf_scores(list(runs.values())).items():
        per[pid]["rrf"] = f
    if len(runs) == 1:
        name = next(iter(runs))
        order = sorted(per.values(), key=lambda e: e[f"{name}_rank"])
        score_key = f"{name}_score"
    else:
        order = sorted(per.values(), key=lambda e: (-e["rrf"], e["pid"]))
        score_key = "rrf"
    out = []
    for rank, e in enumerate(order[:top_n], start=1):
        c = {"pid": e["pid"], "rank": rank, "score": round(float(e[score_key]), 6)}
        c.update({k: v for k, v in e.items() if k not in ("pid", "rrf")})
        out.append(c)
    return out


class _Searchers:
    """The first stages, built lazily (only when some query is still to be retrieved)."""

    def __init__(self, ds: Dataset, settings: MineSettings, work: Path, retriever: str | None,
                 index: str | Path | None, progress: bool, backend: str = "torch"):
        self.ds, self.settings, self.work, self.progress, self.backend = ds, settings, work, progress, backend
        self.retriever, self.index_dir = retriever, index
        self.dense = self.bm25 = None

    def build(self) -> None:
        from tandem.index.dense import build_index, load_index_and_encoder

        if self.settings.dense:
            index_dir = Path(self.index_dir) if self.index_dir else self.work / "index"
            if not self.index_dir and not (index_dir / "manifest.json").exists():  # a given index must exist
                build_index(self.ds.corpus, index_dir, _passage_encoder(self.retriever).set_backend(self.backend),
                            progress=self.progress)
            index, encoder = load_index_and_encoder(index_dir)
            self.dense = index, encoder.set_backend(self.backend)
        if self.settings.bm25:
            from tandem.index.bm25 import BM25, BM25Settings

            self.bm25 = BM25(self.ds.corpus, BM25Settings(stemmer=self.settings.bm25_stemmer))

    def search(self, queries: Mapping[str, str], k: int) -> dict[str, dict]:
        from tandem.index.dense import dense_search

        runs = {}
        if self.dense is not None:
            runs["dense"] = dense_search(*self.dense, queries, k)
        if self.bm25 is not None:
            runs["bm25"] = self.bm25.search(queries, k)
        return runs


def _passage_encoder(retriever: str | None):
    from tandem.models.encoder import Encoder
    from tandem.models.hf import resolve_model
    from tandem.models.retriever import CONFIG_FILE, Retriever

    if retriever and (Path(resolve_model(retriever)) / CONFIG_FILE).exists():
        return Retriever.from_pretrained(retriever).passage_tower()
    return Encoder.from_pretrained(retriever)


def retrieve(ds: Dataset, qids: list[str], path: Path, settings: MineSettings, searchers: _Searchers,
             progress: bool = False, stop_after: int | None = None) -> None:
    """Append a candidates line for every query of ``qids`` not yet in ``path``, chunk by chunk."""
    done = done_qids(path)
    todo = [q for q in qids if q not in done]
    if not todo:
        return
    if done:
        log.info("mine: resuming retrieval, %d of %d queries already done", len(done), len(qids))
    searchers.build()
    written = 0
    with open(path, "a", encoding="utf-8") as f, \
            progress_bar(len(qids), "mining candidates", progress, unit="query", initial=len(done)) as bar:
        for chunk in _chunks(todo, settings.query_batch):
            runs = searchers.search({q: ds.queries[q] for q in chunk}, settings.top_n)
            _append(f, [{"qid": q, "candidates": merge_rrf({n: r.get(q, {}) for n, r in runs.items()}, settings.top_n)}
                        for q in chunk])
            bar.update(len(chunk))
            written += len(chunk)
            if stop_after is not None and written >= stop_after:
                raise KeyboardInterrupt("stopped after %d queries (test hook)" % written)


# ---- 2-4. scoring and calibration ---------------------------------------------------------------
def score_candidates(ds: Dataset, candidates: Path, path: Path, reranker, settings: MineSettings,
                     positives: Mapping[str, list[str]], n_queries: int, progress: bool = False,
                     stop_after: int | None = None, held: set[str] | None = None,
                     only: set[str] | None = None) -> None:
    """Append the re-ranker's logits for each query's (first ``denoise_top``) candidates.

    The ``held`` (calibration) queries, or every query when ``held`` is None, have all their candidates
    scored (``calibration_pool`` candidates) or, the earlier way (``positives``), their labelled positives
    outside the scored candidates too. ``only``: score these queries alone.
    """
    done = done_qids(path)
    written = 0
    with open(path, "a", encoding="utf-8") as f, \
            progress_bar(n_queries, "denoising", progress, unit="query", initial=len(done)) as bar:
        batch: list[dict] = []

        def flush() -> None:
            pairs = [(ds.queries[r["qid"]], ds.corpus.text(pid)) for r in batch for pid in r["pids"]]
            logits = reranker.predict(pairs, batch_size=settings.rerank_batch) if pairs else []
            i = 0
            out = []
            for r in batch:
                n = len(r["pids"])
                out.append({"qid": r["qid"], "pids": r["pids"], "logits": [round(float(x),
                                                                                 5) for x in logits[i : i + n]]})
                i += n
            _append(f, out)
            bar.update(len(batch))
            batch.clear()

        for rec in iter_lines(candidates):
            if rec["qid"] in done or (only is not None and rec["qid"] not in only):
                continue
            cands = [c["pid"] for c in rec["candidates"]]
            calibrating = held is None or rec["qid"] in held
            if settings.denoise_top and not (calibrating and settings.calibration_pool == "candidates"):
                cands = cands[: settings.denoise_top]  # (a calibration query's whole list calibrates)
            scored = set(cands)
            pos = [p for p in positives.get(rec["qid"], []) if p not in scored] \
                if calibrating and settings.calibration_pool == "positives" else []
            if settings.calibration_positives:
                pos = pos[: settings.calibration_positives]
            batch.append({"qid": rec["qid"], "pids": cands + pos})
            if len(batch) * max(len(cands) + len(pos), 1) >= 8 * settings.rerank_batch:
                flush()
                written += 1
                if stop_after is not None and written >= stop_after:
                    raise KeyboardInterrupt("stopped (test hook)")
        if batch:
            flush()


def heldout_qids(qids: list[str], fraction: float) -> set[str]:
    """The queries the trainer holds out from lists in this order (so a warm-up never trained on them)."""
    from tandem.train.lists import heldout_qids as held_by_hash

    return held_by_hash(qids, fraction) or set(qids)  # too few queries to hold any out: calibrate on all


def denoise_subset(qids: list[str], n: int, held: set[str], skip: set[str] = frozenset()) -> set[str] | None:
    """The queries a budgeted denoising scores (``n`` of them: the ``held`` ones first, then the others but
    ``skip`` in the order of a hash of the id, so the choice is the same whatever the order of ``qids``); None:
    all."""
    if n <= 0 or n >= len(qids):
        return None
    from tandem.train.lists import qid_unit

    rest = sorted((q for q in qids if q not in held and q not in skip), key=lambda q: qid_unit(q, "denoise"))
    return set([q for q in qids if q in held] + rest[: max(0, n - len(held))])


def fit_platt(logits: np.ndarray, labels: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """``(a, b)`` minimising the log-loss of ``sigmoid(a * logit + b)`` (Newton steps, small L2)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise UsageError("calibration needs labelled positives and negatives among the held-out pairs")
    # Platt's targets soften 0/1 so that separable data keeps a finite slope
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    def loss(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(np.logaddexp(0, z) - t * z)) + 5e-7 * (a * a + b * b)

    a, b = 0.0, 0.0
    current = loss(a, b)
    for _ in range(iters):
        p = _sigmoid(a * x + b)
        g = np.array([np.sum((p - t) * x), np.sum(p - t)]) + 1e-6 * np.array([a, b])
        w = p * (1 - p)
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        lr = 1.0
        while lr > 1e-8 and loss(a - lr * step[0], b - lr * step[1]) > current:  # backtracking: Newton can overshoot
            lr /= 2
        a, b = a - lr * step[0], b - lr * step[1]
        new = loss(a, b)
        if current - new < 1e-12 * max(1.0, abs(current)):
            break
        current = new
    return float(a), float(b)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x, -60, 60)))


def _calibrated(logits, a: float, b: float) -> np.ndarray:
    """The denoiser's probabilities of its logits under the calibration ``sigmoid(a * logit + b)``."""
    return _sigmoid(a * np.asarray(logits, dtype=np.float64) + b)


def calibrate(scores: Path, positives: Mapping[str, list[str]], held: set[str], settings: MineSettings) -> dict:
    """The calibration ``{a, b, pairs, positives, log_loss, auc}`` from the held-out queries' pairs."""
    xs, ys = [], []
    for rec in iter_lines(scores):
        if rec["qid"] in held:
            pos = set(positives.get(rec["qid"], []))
            xs += rec["logits"]
            ys += [1.0 if p in pos else 0.0 for p in rec["pids"]]
    x, y = np.asarray(xs), np.asarray(ys)
    if settings.calibration == "sigmoid":
        a, b = 1.0, 0.0
    else:
        a, b = fit_platt(x, y)
    out: dict[str, Any] = {"method": settings.calibration, "a": a, "b": b, "pairs": int(len(x)),
                           "positives": int(y.sum()), "queries": len(held)}
    probs = _sigmoid(a * x + b)
    if settings.low_from_positives and y.sum():
        out["low_from_positives"] = float(np.quantile(probs[y > 0], settings.low_from_positives))
    if settings.high_from_precision and y.sum():
        high = high_from_precision(probs, y, settings.high_from_precision)
        if high is not None:
            out["high_from_precision"] = min(settings.high, high)
    if len(x) and 0 < y.sum() < len(y):
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        out["log_loss"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        ranks = np.argsort(np.argsort(x)) + 1  # AUC by the rank-sum formula (ties broken by order)
        n1, n0 = y.sum(), len(y) - y.sum()
        out["auc"] = float((ranks[y > 0].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    if settings.calibration == "platt" and (a <= 0 or out.get("auc", 1.0) <= 0.5):
        # subtle: with a negative slope the highest logits get the lowest probabilities, and the "clearly
        # irrelevant" negatives would be the likeliest false negatives (NFCorpus demo: a = -0.18, AUC 0.32)
        out["usable"] = False
        out["why"] = (f"the re-ranker does not score the held-out queries' labelled positives above their other "
                      f"candidates (AUC {out.get('auc', float('nan')):.3f}, Platt slope {a:.3f}): its probabilities "
                      "would denoise backwards, so the lists keep the undenoised pool alone")
        out.pop("low_from_positives", None)
        out.pop("high_from_precision", None)
    return out


def high_from_precision(probs: np.ndarray, labelled: np.ndarray, precision: float, min_pairs: int = 5,
                        floor: float = 0.5) -> float | None:
    """The least probability ``t >= floor`` such that, of the held-out pairs at ``t`` or above (at least
    ``min_pairs``), a share ``precision`` or more are labelled positives; None where no such ``t`` exists.
    Returned a hair below ``t``, as a ``high`` (pseudo-positives: probability > high) that takes ``t`` in."""
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labelled[order].astype(np.float64)
    share = np.cumsum(y) / np.arange(1, len(y) + 1)
    ok = (share >= precision) & (np.arange(1, len(y) + 1) >= min_pairs) & (p >= floor)
    return float(np.nextafter(p[np.flatnonzero(ok)[-1]], -np.inf)) if ok.any() else None


# ---- 5. pools and lists -----------------------------------------------------------------------
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


def build_pools(qid: str, candidates: list[dict], labelled: list[str], probs: Mapping[str, float],
                settings: MineSettings, near: set[str] = frozenset()) -> tuple[list[dict], list[dict], list[dict]]:
    """(positives, undenoised negatives, denoised negatives) for one query.

    ``probs``: calibrated probabilities of the scored candidates (unscored ones stay undenoised
    only). Labelled positives, and ``near`` (near copies of them), are never negatives;
    pseudo-positives are the most probable unlabelled candidates above ``high`` (or in the
    re-ranker's top ``high_rank``), near copies included.
    """
    labelled_set = set(labelled)
    unlabelled = [c for c in candidates if c["pid"] not in labelled_set]
    undenoised = []
    for c in unlabelled:
        e = {"pid": c["pid"], "rank": c["rank"], "score": c["score"], "source": "undenoised"}
        if c["pid"] in probs:
            e["ce"] = round(probs[c["pid"]], 5)
        undenoised.append(e)
    scored = [e for e in undenoised if "ce" in e]
    if settings.denoise_by == "prob":
        clean = [e for e in scored if settings.low >= 1.0 or probs[e["pid"]] < settings.low]
        pseudo = [e for e in scored if settings.high < 1.0 and probs[e["pid"]] > settings.high]
    else:
        by_ce = sorted([c["pid"] for c in candidates if c["pid"] in probs], key=lambda p: -probs[p])
        ce_rank = {p: r for r, p in enumerate(by_ce, start=1)}
        clean = [e for e in scored if ce_rank[e["pid"]] > settings.low_rank]
        pseudo = [e for e in scored if ce_rank[e["pid"]] <= settings.high_rank]
    pseudo = sorted(pseudo, key=lambda e: -probs[e["pid"]])[: settings.max_pseudo]
    positives = [{"pid": p} for p in labelled]
    positives += [{"pid": e["pid"], "pseudo": True, "score": round(probs[e["pid"]], 5),
                   "rank": e["rank"]} for e in pseudo]
    denoised = [{**e, "source": "denoised"} for e in clean if e["pid"] not in near]
    return positives, [e for e in undenoised if e["pid"] not in near], denoised


def queries_without_denoised(ds: Dataset, cand_path: Path, score_path: Path, positives, calibration: dict,
                             settings: MineSettings, skip: set[str]) -> list[str]:
    """The scored queries (but ``skip``) whose lists would have an undenoised pool and no denoised one."""
    a, b = calibration["a"], calibration["b"]
    near = NearCopies(ds.corpus, settings.near_copy)
    scores = {r["qid"]: r for r in iter_lines(score_path)}
    out = []
    for rec in iter_lines(cand_path):
        qid, srec = rec["qid"], scores.get(rec["qid"])
        if srec is None or qid in skip:
            continue
        probs = dict(zip(srec["pids"], map(float, _calibrated(srec["logits"], a, b))))
        labelled = positives[qid]
        copies = near.of([c["pid"] for c in rec["candidates"] if c["pid"] not in labelled], labelled)
        _, undenoised, denoised = build_pools(qid, rec["candidates"], labelled, probs, settings, copies)
        if undenoised and not denoised:
            out.append(qid)
    return out


def deepen(ds: Dataset, cand_path: Path, path: Path, qids: list[str], searchers: _Searchers, reranker,
           positives, calibration: dict, settings: MineSettings, progress: bool = False,
           stop_after: int | None = None) -> None:
    """Denoised negatives from below the candidates, for the queries ``qids`` whose candidates gave none.

    Each query's first stage is searched down to ``denoise_depth``; the candidates past its ``top_n`` (labelled
    positives and their near copies aside) are scored ``top_n`` at a time, all such queries batched together, until
    one falls below ``low`` or the depth is spent. One line a finished query, ``{"qid", "scored", "denoised"}``
    (the denoised entries with their first-stage rank and probability): resumable, like the scores."""
    todo = [q for q in qids if q not in done_qids(path)]
    if not todo:
        return
    a, b = calibration["a"], calibration["b"]
    near = NearCopies(ds.corpus, settings.near_copy)
    wanted = set(todo)
    first = {r["qid"]: {c["pid"] for c in r["candidates"]} for r in iter_lines(cand_path) if r["qid"] in wanted}
    searchers.build()
    pending: dict[str, list[dict]] = {}
    for chunk in _chunks(todo, settings.query_batch):
        runs = searchers.search({q: ds.queries[q] for q in chunk}, settings.denoise_depth)
        for q in chunk:
            deep = merge_rrf({n: r.get(q, {}) for n, r in runs.items()}, settings.denoise_depth)
            labelled = positives[q]
            rest = [c for c in deep if c["pid"] not in first[q] and c["pid"] not in labelled]
            copies = near.of([c["pid"] for c in rest], labelled)
            pending[q] = [c for c in rest if c["pid"] not in copies]
    found: dict[str, list[dict]] = {q: [] for q in todo}
    scored = dict.fromkeys(todo, 0)
    written = 0
    with open(path, "a", encoding="utf-8") as f, \
            progress_bar(len(todo), f"denoising to rank {settings.denoise_depth}", progress, unit="query") as bar:
        while pending:
            block = {q: c[: settings.top_n] for q, c in pending.items()}
            pairs = [(ds.queries[q], ds.corpus.text(c["pid"])) for q, cs in block.items() for c in cs]
            logits = reranker.predict(pairs, batch_size=settings.rerank_batch) if pairs else []
            i, finished = 0, []
            for q, cs in block.items():
                p = _calibrated(logits[i : i + len(cs)], a, b)
                i += len(cs)
                scored[q] += len(cs)
                found[q] += [{"pid": c["pid"], "rank": c["rank"], "score": c["score"], "ce": round(float(x), 5)}
                             for c, x in zip(cs, p) if x < settings.low]
                pending[q] = pending[q][settings.top_n :]
                if found[q] or not pending[q]:
                    finished.append(q)
            _append(f, [{"qid": q, "scored": scored[q], "denoised": found[q]} for q in finished])
            for q in finished:
                del pending[q]
            bar.update(len(finished))
            written += 1
            if stop_after is not None and written >= stop_after:
                raise KeyboardInterrupt("stopped (test hook)")


def _positives(ds: Dataset) -> dict[str, list[str]]:
    return {q: [p for p, r in judged.items() if r > 0 and p in ds.corpus] for q, judged in ds.qrels.items()}


def mine(data: str | Path, out: str | Path, retriever: str | None = None, index: str | Path | None = None,
         reranker: Any = None, warmup_reranker: bool = False, warmup_steps: int = 60,
         warmup_overrides: dict[str, Any] | list[str] | None = None, settings: MineSettings | None = None,
         progress: bool = True, restart: bool = False, ds: Dataset | None = None, backend: str = "torch",
         _stop: dict[str, int] | None = None) -> MineResult:
    """Mine, (optionally) denoise and write training lists to ``out``; the report goes beside it.

    Args:
        retriever: dense retriever (id or dir; None: the default model) unless ``index`` is given.
        index: a built tandem index to retrieve from (its model encodes the queries).
        reranker: a trained re-ranker to denoise with (id, dir, or a loaded model with ``predict``); or
            ``warmup_reranker`` to train one first on the undenoised lists (``warmup_steps`` of ``--mode reranker``,
            ``warmup_overrides``).
            With neither, the lists hold the undenoised pool only.
        restart: discard the work files of an earlier run instead of resuming.
        backend: the dense retriever's inference runtime (torch, onnx, onnx-int8).
    """
    from tandem.data import load_beir, resolve_dataset

    settings = settings or MineSettings()
    settings.check()
    if reranker and warmup_reranker:
        raise ConfigError("give a trained re-ranker (--reranker) or ask for a warm-up (--warmup-reranker), not both")
    t_start = time.perf_counter()
    directory = resolve_dataset(data) if ds is None else Path(str(data))
    ds = ds or load_beir(directory, settings.split)
    out = Path(out)
    work = out.parent / (out.name.removesuffix(".jsonl") + ".mine")
    if restart and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    positives = _positives(ds)
    qids = [q for q in ds.qrels if q in ds.queries and positives.get(q)]
    skipped = len(ds.qrels) - len(qids)
    if not qids:
        raise UsageError(f"{directory}: no {settings.split} query has a positive in the corpus; nothing to mine")
    if skipped:
        log.warning("mine: %d of %d %s queries have no text or no positive in the corpus and are left out",
                    skipped, len(ds.qrels), settings.split)

    state = read_json(work / "manifest.json") if (work / "manifest.json").exists() else {}
    first_stage = {**settings.retrieval_key(), "retriever": retriever, "index": str(index) if index else None,
                   "queries": len(qids)}
    _invalidate(work, state, "candidates", first_stage, ["candidates.jsonl", "index", "scores.jsonl", "warmup"])
    state["candidates"] = first_stage
    write_json(work / "manifest.json", state)
    t0 = time.perf_counter()
    cand_path = work / "candidates.jsonl"
    retrieve(ds, qids, cand_path, settings, _Searchers(ds, settings, work, retriever, index, progress, backend),
             progress,
             (_stop or {}).get("retrieve"))
    seconds["retrieve"] = time.perf_counter() - t0

    held = heldout_qids(qids, settings.calibration_fraction)  # the calibration queries (a warm-up holds them out)
    uncalibrated: set[str] = set()  # held out, beyond the cap: neither calibrated on nor trained on
    if 0 < settings.calibration_max_queries < len(held):
        from tandem.train.lists import first_by_hash

        capped = set(first_by_hash(held, settings.calibration_max_queries, "calibration"))
        held, uncalibrated = capped, held - capped
    if warmup_reranker:
        t0 = time.perf_counter()
        reranker = str(_warmup(ds, directory, work, cand_path, positives, settings, warmup_steps, warmup_overrides,
                               progress, state))
        seconds["warmup"] = time.perf_counter() - t0
    calibration = ident = only = deep_path = None
    if reranker is not None:
        from tandem.models.hf import model_fingerprint, resolve_model
        from tandem.models.reranker import Reranker

        loaded = not isinstance(reranker, (str, Path))
        ident = getattr(reranker, "name", type(reranker).__name__) if loaded else str(reranker)
        key = {"reranker": ident, "fingerprint": None if loaded else model_fingerprint(resolve_model(str(reranker))),
               "denoise_top": settings.denoise_top, "denoise_queries": settings.denoise_queries,
               "calibration_positives": settings.calibration_positives,
               "calibration_max_queries": settings.calibration_max_queries}
        if settings.calibration_pool != "positives":  # (the earlier way keeps its key: its scores stay valid)
            key["calibration_pool"] = settings.calibration_pool
        _invalidate(work, state, "scores", key, ["scores.jsonl"])
        state["scores"] = key
        write_json(work / "manifest.json", state)
        t0 = time.perf_counter()
        score_path = work / "scores.jsonl"
        only = denoise_subset(qids, settings.denoise_queries, held, uncalibrated)
        if only is not None:
            log.info("mine: denoising %d of %d training queries (denoise_queries); lists for those alone",
                     len(only), len(qids))
        @functools.cache
        def denoiser():  # loaded once, and only where something is left to score
            model = reranker if loaded else Reranker.from_pretrained(reranker)
            if not getattr(getattr(model, "settings", None), "trained", True):
                raise IncompatibleArtifactError(f"re-ranker {ident!r} has an untrained head: it cannot denoise. "
                                                "Pass a trained re-ranker, or --warmup-reranker to train one first")
            return model

        if len(done_qids(score_path)) < len(only or qids):
            score_candidates(ds, cand_path, score_path, denoiser(), settings, positives, len(only or qids), progress,
                             (_stop or {}).get("score"), held, only)
        seconds["score"] = time.perf_counter() - t0
        calibration = calibrate(score_path, positives, held, settings)
        if calibration.get("usable") is False:
            log.warning("mine: not denoising: %s", calibration["why"])
        if "low_from_positives" in calibration:
            log.info("mine: low threshold %.4f = the %.0f%% quantile of held-out positives' probabilities",
                     calibration["low_from_positives"], 100 * settings.low_from_positives)
            settings = replace(settings, low=calibration["low_from_positives"])
        if "high_from_precision" in calibration:
            log.info("mine: high threshold %.4f: held-out candidates above it are labelled positives at >= %.0f%%",
                     calibration["high_from_precision"], 100 * settings.high_from_precision)
            settings = replace(settings, high=max(calibration["high_from_precision"], settings.low))
        if settings.denoise_depth and calibration.get("usable", True):
            t0 = time.perf_counter()
            deep_key = {**key, "denoise_depth": settings.denoise_depth, "low": settings.low, "a": calibration["a"],
                        "b": calibration["b"], "near_copy": settings.near_copy}
            _invalidate(work, state, "deep", deep_key, ["deep.jsonl"])
            state["deep"] = deep_key
            write_json(work / "manifest.json", state)
            deep_path = work / "deep.jsonl"
            # the held-out queries' lists train nothing: only the training lists are deepened
            todo = queries_without_denoised(ds, cand_path, score_path, positives, calibration, settings,
                                            held | uncalibrated)
            if todo:
                log.info("mine: %d queries have no denoised negative in their top-%d: scoring down to rank %d",
                         len(todo), settings.top_n, settings.denoise_depth)
                deepen(ds, cand_path, deep_path, todo,
                       _Searchers(ds, settings, work, retriever, index, progress, backend), denoiser(), positives,
                       calibration, settings, progress, (_stop or {}).get("deep"))
            seconds["deep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = _write_lists(ds, out, cand_path, work / "scores.jsonl" if reranker is not None else None, positives,
                          calibration, settings, held, only, deep_path, held | uncalibrated)
    seconds["lists"] = time.perf_counter() - t0
    report.update({"settings": asdict(settings), "retriever": retriever, "index": str(index) if index else None,
                   "reranker": ident,
                   "warmup_reranker": warmup_reranker,
                   "queries_left_out": skipped, "seconds": seconds,
                   "total_seconds": time.perf_counter() - t_start, "lists_file": str(out)})
    _write_report(out, report)
    return MineResult(out, report)


def _invalidate(work: Path, state: dict, phase: str, key: dict, files: list[str]) -> None:
    if phase in state and state[phase] != key:
        log.warning("mine: %s were made with other settings (%s); redoing them", phase, state[phase])
        for name in files:
            p = work / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _warmup(ds, directory, work: Path, cand_path: Path, positives, settings: MineSettings, steps: int,
            overrides, progress: bool, state: dict) -> Path:
    """Train a re-ranker (reranker mode, gated by default) on the undenoised lists; resumable."""
    from tandem.train.api import train
    from tandem.train.lists import TrainingList, write_lists

    target = work / "warmup"
    extra = dict(o.split("=", 1) for o in overrides) if isinstance(overrides, list) else dict(overrides or {})
    ov = {"reranker_arch": "gated", "heldout_fraction": settings.calibration_fraction, **extra,
          "mode": "reranker", "max_steps": steps}
    key = {"steps": steps, "overrides": ov}
    _invalidate(work, state, "warmup", key, ["warmup", "scores.jsonl"])
    state["warmup"] = key
    write_json(work / "manifest.json", state)
    if (target / "done.json").exists():
        return target / "reranker"
    lists = []
    for rec in iter_lines(cand_path):
        pos, negs, _ = build_pools(rec["qid"], rec["candidates"], positives[rec["qid"]], {}, settings)  # unscored
        if negs:
            lists.append(TrainingList(rec["qid"], pos, negs))
    write_lists(work / "undenoised.jsonl", lists)
    log.info("mine: warming up a re-ranker for %d steps on %d undenoised lists", steps, len(lists))
    train(directory, target, lists=work / "undenoised.jsonl", overrides=ov, resume=True, progress=progress)
    write_json(target / "done.json", {"steps": steps})
    return target / "reranker"


def _write_lists(ds: Dataset, out: Path, cand_path: Path, score_path: Path | None, positives, calibration,
                 settings: MineSettings, held: set[str] | None = None, only: set[str] | None = None,
                 deep_path: Path | None = None, heldout: set[str] = frozenset()) -> dict[str, Any]:
    """Stream candidates (+ scores) into the lists file (atomically) and gather the report's statistics;
    ``only``: the lists of these queries alone (those a budgeted denoising scored); ``deep_path``: the denoised
    negatives found below the candidates (:func:`deepen`); ``heldout``: the queries whose lists train nothing
    (kept out of the hybrid-lists share)."""
    a, b = (calibration["a"], calibration["b"]) if calibration else (1.0, 0.0)
    usable = not calibration or calibration.get("usable", True)  # else: scores read, kept out of the pools
    scores = iter_lines(score_path) if score_path else None
    rng = np.random.default_rng(settings.seed)
    n_lists = n_cands = n_flagged = n_scored = n_pseudo_q = n_pseudo = n_denoised = n_no_neg = n_near = 0
    deep = {r["qid"]: r for r in iter_lines(deep_path)} if deep_path is not None and deep_path.exists() else {}
    n_train_lists = n_hybrid = n_deep_found = n_deep_denoised = 0
    near = NearCopies(ds.corpus, settings.near_copy)
    cand_counts: list[int] = []
    pos_ranks: list[int] = []
    pos_probs: list[float] = []
    flagged_res: list = []  # reservoir samples (query, passage, prob)
    pseudo_res: list = []
    clean_res: list = []
    seen = {"flagged": 0, "pseudo": 0, "clean": 0}

    def sample(kind: str, res: list, item) -> None:
        seen[kind] += 1
        if len(res) < settings.samples:
            res.append(item)
        else:
            j = int(rng.integers(seen[kind]))
            if j < settings.samples:
                res[j] = item

    from tandem.train.lists import TrainingList

    with atomic_open(out) as f:
        for rec in iter_lines(cand_path):
            qid, cands = rec["qid"], rec["candidates"]
            if only is not None and qid not in only:
                continue
            labelled = positives[qid]
            probs: dict[str, float] = {}
            if scores is not None:
                srec = next(scores)
                if srec["qid"] != qid:
                    raise IncompatibleArtifactError(f"{score_path}: out of step with {cand_path} at query {qid!r}; "
                                                    "rerun with --restart")
                probs = dict(zip(srec["pids"], map(float, _calibrated(srec["logits"], a, b)))) if usable else {}
                if held is None or qid in held:
                    pos_probs += [probs[x] for x in labelled if x in probs]
            cand_counts.append(len(cands))
            n_cands += len(cands)
            rank_of = {c["pid"]: c["rank"] for c in cands}
            pos_ranks.append(min((rank_of[p] for p in labelled if p in rank_of), default=0))
            copies = near.of([c["pid"] for c in cands if c["pid"] not in labelled], labelled)
            n_near += len(copies)
            pos, undenoised, denoised = build_pools(qid, cands, labelled, probs, settings, copies)
            if not undenoised:
                n_no_neg += 1
                continue
            if qid in deep and usable and not denoised:
                below = [{**e, "source": "denoised"} for e in deep[qid]["denoised"]]
                denoised += below
                n_deep_found += bool(below)
                n_deep_denoised += len(below)
            if qid not in heldout:
                n_train_lists += 1
                n_hybrid += bool(denoised)
            query = ds.queries[qid]
            flagged_ids = {e["pid"] for e in undenoised if "ce" in e} - {e["pid"] for e in denoised}
            n_scored += sum(1 for e in undenoised if "ce" in e)
            n_flagged += len(flagged_ids)
            n_denoised += len(denoised)
            pseudo = [e for e in pos if e.get("pseudo")]
            n_pseudo += len(pseudo)
            n_pseudo_q += bool(pseudo)
            for e in undenoised:
                if e["pid"] in flagged_ids:
                    sample("flagged", flagged_res, (qid, query, e["pid"], e["ce"], e["rank"]))
            for e in pseudo:
                sample("pseudo", pseudo_res, (qid, query, e["pid"], e["score"], e["rank"]))
            for e in denoised[:3]:
                sample("clean", clean_res, (qid, query, e["pid"], e["ce"], e["rank"]))
            f.write(json.dumps(TrainingList(qid, pos, undenoised + denoised).to_json()) + "\n")
            n_lists += 1

    def examples(res):
        return [{"qid": q, "query": text, "pid": pid, "first_stage_rank": r, "probability": round(p, 4),
                 "passage": ds.corpus.text(pid)[:400]} for q, text, pid, p, r in sorted(res, key=lambda t: -t[3])]

    ranks = np.asarray(pos_ranks)
    rank_dist = {}
    for lo, hi in ((1, 1), (2, 5), (6, 10), (11, 20), (21, settings.top_n)):
        if lo <= settings.top_n:
            hi = min(hi, settings.top_n)
            rank_dist[str(lo) if lo == hi else f"{lo}-{hi}"] = int(((ranks >= lo) & (ranks <= hi)).sum())
    rank_dist["not retrieved"] = int((ranks == 0).sum())
    counts = np.asarray(cand_counts) if cand_counts else np.zeros(1)
    report: dict[str, Any] = {
        "lists": n_lists, "queries_without_negatives": n_no_neg,
        "candidates_per_query": {"mean": float(counts.mean()), "min": int(counts.min()), "max": int(counts.max())},
        "positive_first_rank": rank_dist,
        "positives_retrieved_share": float((ranks > 0).mean()) if len(ranks) else 0.0,
    }
    if score_path is not None:
        pp = np.asarray(pos_probs)
        report["denoising"] = {
            "calibration": calibration, "scored_candidates": n_scored,
            "flagged_as_likely_false_negatives": n_flagged,
            "flagged_share": n_flagged / max(n_scored, 1),
            "denoised_negatives": n_denoised, "denoised_share": n_denoised / max(n_scored, 1),
            "pseudo_positives": n_pseudo, "queries_with_pseudo_positive": n_pseudo_q,
            "near_copies_of_positives": n_near,
            "training_lists_with_denoised_pool": {"lists": n_train_lists, "with": n_hybrid,
                                                  "share": n_hybrid / max(n_train_lists, 1)},
            "deeper": {"depth": settings.denoise_depth, "queries": len(deep), "found": n_deep_found,
                       "scored_candidates": sum(int(r["scored"]) for r in deep.values()),
                       "denoised_negatives": n_deep_denoised},
            "labelled_positives_probability": {
                "mean": float(pp.mean()) if len(pp) else None,
                "above_high": float((pp > settings.high).mean()) if len(pp) else None,
                "below_low": float((pp < settings.low).mean()) if len(pp) else None},
            "samples": {"flagged": examples(flagged_res), "pseudo_positives": examples(pseudo_res),
                        "denoised_negatives": examples(clean_res)},
        }
    return report


def _write_report(out: Path, report: dict[str, Any]) -> None:
    stem = out.parent / out.name.removesuffix(".jsonl")
    write_json(Path(f"{stem}.report.json"), manifest("mining report", **report))
    with atomic_open(Path(f"{stem}.report.md")) as f:
        f.write(render_report(report))


def render_report(r: dict[str, Any]) -> str:
    s = r["settings"]
    stages = " + ".join(n for n, on in (("dense", s["dense"]), ("BM25", s["bm25"])) if on)
    lines = [f"# Mining report: {r['lists_file']}", "",
             f"First stage: {stages} (retriever {r.get('retriever') or r.get('index') or 'default model'}), "
             f"top-{s['top_n']} per {s['split']} query. {r['lists']} lists written"
             f" ({r['queries_left_out']} queries without a positive left out, {r['queries_without_negatives']} "
             f"without any negative). {r['total_seconds']:.0f} s in all "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in r['seconds'].items())}).", "",
             "## Candidates", "",
             f"Per query: mean {r['candidates_per_query']['mean']:.1f}, min {r['candidates_per_query']['min']}, "
             f"max {r['candidates_per_query']['max']}. Queries with a labelled positive among their candidates: "
             f"{100 * r['positives_retrieved_share']:.1f}%.", "",
             "| best positive's first-stage rank | queries |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["positive_first_rank"].items()]
    d = r.get("denoising")
    if not d:
        lines += ["", "No re-ranker given: the lists hold the undenoised pool only.", ""]
        return "\n".join(lines)
    c = d["calibration"]
    chosen = (f" (low chosen as the {100 * s['low_from_positives']:.0f}% quantile of the held-out positives' "
              "probabilities)") if s.get("low_from_positives") else ""
    high_chosen = (f" (high chosen where {100 * s['high_from_precision']:.0f}% of the held-out candidates above it "
                   "are labelled positives)") if s.get("high_from_precision") and "high_from_precision" in c else ""
    mode = (f"probability < {s['low']:.4g}{chosen} -> denoised negative, > {s['high']:.4g}{high_chosen} -> "
            "pseudo-positive"
            if s["denoise_by"] == "prob" else
            f"re-ranker rank > {s['low_rank']} -> denoised negative, rank <= {s['high_rank']} -> pseudo-positive")
    lp = d["labelled_positives_probability"]
    lines += ["", "## Denoising", "",
              f"Re-ranker: {r['reranker']}{' (warmed up here)' if r['warmup_reranker'] else ''}; "
              f"{'first ' + str(s['denoise_top']) if s['denoise_top'] else 'all'} candidates scored. Calibration "
              f"{c['method']}: p = sigmoid({c['a']:.3f} * logit + {c['b']:.3f}), from {c['pairs']} labelled pairs of "
              f"{c['queries']} held-out queries ({c['positives']} positives)"
              + (f"; log-loss {c['log_loss']:.3f}, AUC {c['auc']:.3f}" if "auc" in c else "") + ".", "",
              *([f"**Not denoised**: {c['why']}.", ""] if c.get("usable") is False else []),
              f"Rule: {mode}.", "",
              "| what | count | share of scored candidates |", "|---|---|---|",
              f"| scored candidates (labelled positives excluded) | {d['scored_candidates']} | 100% |",
              f"| flagged as likely false negatives (not denoised) | {d['flagged_as_likely_false_negatives']} | "
              f"{100 * d['flagged_share']:.1f}% |",
              f"| denoised negatives | {d['denoised_negatives']} | {100 * d['denoised_share']:.1f}% |",
              f"| pseudo-positives added | {d['pseudo_positives']} (in {d['queries_with_pseudo_positive']} queries) | "
              "|",
              "",
              *_deeper_lines(d),
              f"Labelled positives as the denoiser sees them (the calibration queries', which a warm-up did not "
              f"train on): mean probability "
              f"{lp['mean'] if lp['mean'] is None else round(lp['mean'], 3)}; "
              f"above the high threshold {_pct(lp['above_high'])}, below the low one {_pct(lp['below_low'])} "
              "(a labelled positive is never made a negative, whatever its score).", ""]
    for kind, title in (("flagged", "Flagged as likely false negatives (kept out of the denoised pool)"),
                        ("pseudo_positives", "Pseudo-positives"), ("denoised_negatives", "Denoised negatives")):
        lines += [f"### {title}: a random sample", "", "| query | passage | p | first-stage rank |",
                  "|---|---|---|---|"]
        for e in d["samples"][kind]:
            lines.append(f"| {_cell(e['query'], 120)} | {_cell(e['pid'] + ': ' + e['passage'], 240)} | "
                         f"{e['probability']:.3f} | {e['first_stage_rank']} |")
        lines.append("")
    return "\n".join(lines)


def _deeper_lines(d: dict[str, Any]) -> list[str]:
    """The report's lines on the lists that are hybrid, and on the denoised negatives found below the candidates."""
    h = d.get("training_lists_with_denoised_pool")
    lines = [f"Training lists with a denoised pool (hybrid; the held-out queries' aside): {h['with']} of "
             f"{h['lists']} ({_pct(h['share'])})."] if h else []
    g = d.get("deeper") or {}
    if g.get("depth"):
        lines.append(f"Below the candidates (`denoise_depth` {g['depth']}): {g['queries']} queries had no denoised "
                     f"negative among them; {g['scored_candidates']} deeper candidates scored, {g['found']} queries "
                     f"found {g['denoised_negatives']} denoised negatives there.")
    return [*lines, ""] if lines else []


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _cell(text: str, n: int) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


__all__ = ["MineSettings", "MineResult", "mine", "merge_rrf", "build_pools", "fit_platt", "calibrate",
           "heldout_qids", "done_qids", "deepen"]
