"""The mining and denoising settings (:class:`MineSettings`, ``tandem mine --set KEY=VALUE``, a recipe's
``mine:`` mapping) and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError
from tandem.settings import setting as _f
from tandem.train.lists import HELDOUT_SALT


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
    heldout_salt: str = _f(HELDOUT_SALT, "the calibration queries: those whose id hashes with this salt below "
                                             "calibration_fraction (the queries a warm-up with the same "
                                             "heldout_fraction and heldout_salt holds out)")
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
            (bool(self.heldout_salt), "heldout_salt must not be empty"),
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


# the settings that matter only where a re-ranker scores the candidates: a mining without one (the undenoised lists)
# is the same whatever they are
DENOISING_SETTINGS = frozenset({
    "denoise_by", "low", "high", "low_from_positives", "high_from_precision", "low_rank", "high_rank", "calibration",
    "calibration_fraction", "heldout_salt", "calibration_pool", "calibration_positives", "calibration_max_queries",
    "denoise_top", "max_pseudo", "denoise_depth", "denoise_queries", "rerank_batch"})


@dataclass
class MineResult:
    lists: Path
    report: dict[str, Any]
