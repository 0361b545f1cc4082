"""Step 5: each query's pools (labelled and pseudo-positives, undenoised and denoised negatives) and the lists
file with its statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tandem.data.types import Dataset
from tandem.errors import IncompatibleArtifactError
from tandem.io import atomic_open
from tandem.mining.denoise import calibrated
from tandem.mining.lines import iter_lines
from tandem.mining.near import NearCopies
from tandem.mining.settings import MineSettings
from tandem.train.lists import DENOISED, UNDENOISED, NegativeEntry, labelled_positives


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
        e: NegativeEntry = {"pid": c["pid"], "rank": c["rank"], "score": c["score"], "source": UNDENOISED}
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
    positives = labelled_positives(labelled, {c["pid"]: c["rank"] for c in candidates})
    positives += [{"pid": e["pid"], "pseudo": True, "score": round(probs[e["pid"]], 5),
                   "rank": e["rank"]} for e in pseudo]
    denoised: list[NegativeEntry] = [{**e, "source": DENOISED} for e in clean if e["pid"] not in near]
    return positives, [e for e in undenoised if e["pid"] not in near], denoised


def probabilities(srec: Mapping[str, Any], calibration: Mapping[str, Any] | None) -> dict[str, float]:
    """A scores line's calibrated probabilities, pid -> p (``sigmoid(logit)`` without a calibration); none where
    the calibration is not usable (the denoiser ranks positives below the rest: its scores are read, never used)."""
    if calibration and calibration.get("usable", True) is False:
        return {}
    a, b = (calibration["a"], calibration["b"]) if calibration else (1.0, 0.0)
    return dict(zip(srec["pids"], map(float, calibrated(srec["logits"], a, b))))


def query_pools(rec: Mapping[str, Any], labelled: list[str], probs: Mapping[str, float], settings: MineSettings,
                near: NearCopies) -> tuple[set[str], tuple[list[dict], list[dict], list[dict]]]:
    """One candidates line's near copies of its labelled positives and its pools (:func:`build_pools`): what the
    lists file writes and what decides which queries are searched deeper, computed one way."""
    cands = rec["candidates"]
    copies = near.of([c["pid"] for c in cands if c["pid"] not in labelled], labelled)
    return copies, build_pools(rec["qid"], cands, labelled, probs, settings, copies)


def queries_without_denoised(ds: Dataset, cand_path: Path, score_path: Path, positives, calibration: dict,
                             settings: MineSettings, skip: set[str]) -> list[str]:
    """The scored queries (but ``skip``) whose lists would have an undenoised pool and no denoised one."""
    near = NearCopies(ds.corpus, settings.near_copy)
    scores = {r["qid"]: r for r in iter_lines(score_path)}
    out = []
    for rec in iter_lines(cand_path):
        qid, srec = rec["qid"], scores.get(rec["qid"])
        if srec is None or qid in skip:
            continue
        _, (_, undenoised, denoised) = query_pools(rec, positives[qid], probabilities(srec, calibration), settings,
                                                   near)
        if undenoised and not denoised:
            out.append(qid)
    return out


def write_lists(ds: Dataset, out: Path, cand_path: Path, score_path: Path | None, positives, calibration,
                 settings: MineSettings, held: set[str] | None = None, only: set[str] | None = None,
                 deep_path: Path | None = None, heldout: set[str] = frozenset()) -> dict[str, Any]:
    """Stream candidates (+ scores) into the lists file (atomically) and gather the report's statistics;
    ``only``: the lists of these queries alone (those a budgeted denoising scored); ``deep_path``: the denoised
    negatives found below the candidates (:func:`deepen`); ``heldout``: the queries whose lists train nothing
    (kept out of the hybrid-lists share)."""
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
                probs = probabilities(srec, calibration)
                if held is None or qid in held:
                    pos_probs += [probs[x] for x in labelled if x in probs]
            cand_counts.append(len(cands))
            n_cands += len(cands)
            copies, (pos, undenoised, denoised) = query_pools(rec, labelled, probs, settings, near)
            pos_ranks.append(min((e["rank"] for e in pos if not e.get("pseudo") and "rank" in e), default=0))
            n_near += len(copies)
            if not undenoised:
                n_no_neg += 1
                continue
            if qid in deep and usable and not denoised:
                below = [{**e, "source": DENOISED} for e in deep[qid]["denoised"]]
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
