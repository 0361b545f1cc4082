"""Steps 2-4: the re-ranker's scores of the candidates (``scores.jsonl``, resumable), their calibration into
probabilities on held-out queries, and the deeper search for denoised negatives below the candidates
(``deep.jsonl``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tandem.data.types import Dataset
from tandem.errors import UsageError
from tandem.mining.candidates import Searchers, merge_rrf
from tandem.mining.lines import append_lines, chunks, done_qids, iter_lines
from tandem.mining.near import NearCopies
from tandem.mining.settings import MineSettings
from tandem.utils import progress_bar

log = logging.getLogger("tandem.mine")


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
            append_lines(f, out)
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


def heldout_qids(qids: list[str], fraction: float, salt: str) -> set[str]:
    """The queries the trainer holds out from lists in this order at the same ``fraction`` and ``salt`` (so a warm-up
    never trained on them)."""
    from tandem.train.lists import heldout_qids as held_by_hash

    return held_by_hash(qids, fraction, salt) or set(qids)  # too few queries to hold any out: calibrate on all


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


def calibrated(logits, a: float, b: float) -> np.ndarray:
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


def deepen(ds: Dataset, cand_path: Path, path: Path, qids: list[str], searchers: Searchers, reranker,
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
    for chunk in chunks(todo, settings.query_batch):
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
                p = calibrated(logits[i : i + len(cs)], a, b)
                i += len(cs)
                scored[q] += len(cs)
                found[q] += [{"pid": c["pid"], "rank": c["rank"], "score": c["score"], "ce": round(float(x), 5)}
                             for c, x in zip(cs, p) if x < settings.low]
                pending[q] = pending[q][settings.top_n :]
                if found[q] or not pending[q]:
                    finished.append(q)
            append_lines(f, [{"qid": q, "scored": scored[q], "denoised": found[q]} for q in finished])
            for q in finished:
                del pending[q]
            bar.update(len(finished))
            written += 1
            if stop_after is not None and written >= stop_after:
                raise KeyboardInterrupt("stopped (test hook)")
