"""``mine``: the steps in order over resumable work files in ``<LISTS>.mine/``, each redone where its settings
changed (``manifest.json``)."""

from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tandem.data.types import Dataset
from tandem.errors import IncompatibleArtifactError, UsageError
from tandem.io import read_json, write_json
from tandem.mining.candidates import Searchers, retrieve
from tandem.mining.denoise import calibrate, deepen, denoise_subset, heldout_qids, score_candidates
from tandem.mining.lines import done_qids
from tandem.mining.pools import queries_without_denoised, write_lists
from tandem.mining.report import write_report
from tandem.mining.settings import MineResult, MineSettings

log = logging.getLogger("tandem.mine")


def labelled_positives(ds: Dataset) -> dict[str, list[str]]:
    return {q: [p for p, r in judged.items() if r > 0 and p in ds.corpus] for q, judged in ds.qrels.items()}


def mine(data: str | Path, out: str | Path, retriever: str | None = None, index: str | Path | None = None,
         reranker: Any = None, settings: MineSettings | None = None,
         progress: bool = True, restart: bool = False, ds: Dataset | None = None, backend: str = "torch",
         candidates_from: str | Path | None = None, warmed_up: bool = False,
         _stop: dict[str, int] | None = None) -> MineResult:
    """Mine, (optionally) denoise and write training lists to ``out``; the report goes beside it.

    Args:
        retriever: dense retriever (id or dir; None: the default model) unless ``index`` is given.
        index: a built tandem index to retrieve from (its model encodes the queries).
        reranker: a trained re-ranker to denoise with (id, dir, or a loaded model with ``predict``); without one
            the lists hold the undenoised pool only (and can warm one up:
            :func:`tandem.train.api.warmup_reranker`, as ``tandem mine --warmup-reranker`` does).
        restart: discard the work files of an earlier run instead of resuming.
        warmed_up: the re-ranker was warmed up on these candidates' undenoised lists (the report says so).
        candidates_from: the lists file of an earlier mining whose candidates this one reuses instead of
            retrieving again (the recipe's denoise stage reuses its lists stage's); used only where they were made
            with the same first stage and settings, else retrieved anew.
        backend: the dense retriever's inference runtime (torch, onnx, onnx-int8).
    """
    from tandem.data import load_beir, resolve_dataset

    settings = settings or MineSettings()
    settings.check()
    t_start = time.perf_counter()
    directory = resolve_dataset(data) if ds is None else Path(str(data))
    ds = ds or load_beir(directory, settings.split)
    out = Path(out)
    work = work_dir(out)
    if restart and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    positives = labelled_positives(ds)
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
    if candidates_from is not None and not (work / "candidates.jsonl").exists():
        _reuse_candidates(work_dir(candidates_from), work, first_stage)
    state["candidates"] = first_stage
    write_json(work / "manifest.json", state)
    t0 = time.perf_counter()
    cand_path = work / "candidates.jsonl"
    retrieve(ds, qids, cand_path, settings, Searchers(ds, settings, work, retriever, index, progress, backend),
             progress,
             (_stop or {}).get("retrieve"))
    seconds["retrieve"] = time.perf_counter() - t0

    # the calibration queries (a warm-up at the same fraction and salt holds them out)
    held = heldout_qids(qids, settings.calibration_fraction, settings.heldout_salt)
    uncalibrated: set[str] = set()  # held out, beyond the cap: neither calibrated on nor trained on
    if 0 < settings.calibration_max_queries < len(held):
        from tandem.train.lists import first_by_hash

        capped = set(first_by_hash(held, settings.calibration_max_queries, "calibration"))
        held, uncalibrated = capped, held - capped
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
                       Searchers(ds, settings, work, retriever, index, progress, backend), denoiser(), positives,
                       calibration, settings, progress, (_stop or {}).get("deep"))
            seconds["deep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = write_lists(ds, out, cand_path, work / "scores.jsonl" if reranker is not None else None, positives,
                          calibration, settings, held, only, deep_path, held | uncalibrated)
    seconds["lists"] = time.perf_counter() - t0
    report.update({"settings": asdict(settings), "retriever": retriever, "index": str(index) if index else None,
                   "reranker": ident,
                   "warmup_reranker": warmed_up,
                   "queries_left_out": skipped, "seconds": seconds,
                   "total_seconds": time.perf_counter() - t_start, "lists_file": str(out)})
    write_report(out, report)
    return MineResult(out, report)


def work_dir(lists: str | Path) -> Path:
    """The work files' directory of a lists file: ``<LISTS>.mine/``."""
    lists = Path(lists)
    return lists.parent / (lists.name.removesuffix(".jsonl") + ".mine")


def _reuse_candidates(source: Path, work: Path, key: dict) -> None:
    """Another mining's candidates (work directory ``source``) copied into ``work`` where they were made with the
    first stage ``key`` and are complete; else, with a warning, nothing (they are retrieved anew). The caller records
    ``key`` in the manifest."""
    made = read_json(source / "manifest.json").get("candidates") if (source / "manifest.json").exists() else None
    done = done_qids(source / "candidates.jsonl") if (source / "candidates.jsonl").exists() else set()
    if made != key or len(done) < key["queries"]:
        log.warning("mine: the candidates in %s are %s: retrieving anew", source,
                    "not complete" if made == key else f"of another first stage ({made})")
        return
    shutil.copy2(source / "candidates.jsonl", work / "candidates.jsonl")
    log.info("mine: reusing the %d queries' candidates of %s", len(done), source)


def _invalidate(work: Path, state: dict, phase: str, key: dict, files: list[str]) -> None:
    if phase in state and state[phase] != key:
        log.warning("mine: %s were made with other settings (%s); redoing them", phase, state[phase])
        for name in files:
            p = work / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
