"""``tandem recipe`` / ``tandem demo``: the whole method as resumable stages, with a report.

baselines (BM25, zero-shot dense) -> mine the zero-shot top-n for training queries -> re-ranker
warm-up -> joint training (dynamic listwise distillation) -> index with the joint retriever ->
retrieve -> re-rank with the joint re-ranker -> evaluate -> report.json, report.md, plots.

Each stage writes under ``OUT/<stage>/`` and a ``done.json`` with its settings; a stage whose
settings (and those of the stages it reads) are unchanged is skipped, and a training stage that
was killed resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, ClassVar

from tandem.errors import ConfigError, UsageError
from tandem.io import atomic_open, manifest, read_json, write_json
from tandem.settings import setting as _f

log = logging.getLogger(__name__)

REPORT_MEASURES = ("nDCG@10", "RR@10", "R@100")
CONFIG_DIR = Path(__file__).parent / "configs"

# Throughputs measured on the 2-core CPU box (BENCHMARKS.md), at 128 passage tokens; used by --dry-run.
CPU_RATES = {"encode_per_s": 60.0, "train_seq_per_s": 11.0, "rerank_pairs_per_s": 40.0}
# the same CPU in bf16 (precision auto on a CPU with AVX-512 BF16): the demo's stages, 2026-11-26
CPU_RATES_BF16 = {"encode_per_s": 110.0, "train_seq_per_s": 16.0, "rerank_pairs_per_s": 62.0}
# training steps without attention dropout (fused attention) against with it: 1.22-1.35x on the demo's three
# training shapes, 2-core EPYC, fp32 (benchmarks/train_memory.py, 2026-12-02)
FUSED_ATTENTION_SPEEDUP = 1.25
HYBRID_EXTRA_PAIRS = 1.45
# denoise_depth: the share of denoised training queries whose top_n hold no denoised negative (measured, demo seed 1:
# SciFact 5%, NFCorpus 27%) and the share of their deeper candidates then scored before one is found (NFCorpus 52%)
DEEPENED_QUERIES = 0.15
DEEPENED_SCORED = 0.5


def default_rates() -> dict[str, float]:
    """This project's 2-core CPU rates at the precision this process would use on a CPU."""
    from tandem.utils import resolve_precision

    return dict(CPU_RATES_BF16 if resolve_precision(None, "cpu") == "bf16" else CPU_RATES)


@dataclass(frozen=True)
class RecipeConfig:
    # the names `tandem train` uses for the same settings, accepted here too
    ALIASES: ClassVar[dict[str, str]] = {"passage_max_length": "max_length"}

    data: str = _f("scifact", "dataset name or directory (BEIR, or MS MARCO passage files)")
    train_split: str = _f("train", "qrels split of the training queries")
    eval_split: str = _f("auto", "qrels split the report evaluates on (auto: test where the data has it, else dev)")
    validation: str = _f("auto", "queries that decide which models are adopted: auto (the dev split where there is "
                                 "one and it is not eval_split, else held-out training queries), heldout, a split "
                                 "name, or none")
    val_max_queries: int = _f(300, "validation queries at most (a fixed subset by a hash of the id)")
    heldout_min_queries: int = _f(0, "where validation is held-out training queries (no dev split): hold out at "
                                     "least this many (heldout_fraction raised, up to heldout_max_fraction), so "
                                     "that validation can tell models apart: 72 SciFact queries at 0.1 could not "
                                     "(BENCHMARKS.md); 0: heldout_fraction as it is")
    heldout_max_fraction: float = _f(0.3, "heldout_min_queries raises heldout_fraction up to this share at most")
    validation_min_queries: int = _f(50, "held-out validation needs at least this many training queries; with "
                                         "fewer and no dev split the recipe says it cannot validate")
    adopt: str = _f("validation", "validation: a trained model is used only if it beats its starting point on "
                                  "validation (do no harm); always: use every trained model")
    min_gain: float = _f(0.0, "adopt a trained model only if its validation nDCG@10 exceeds its start's by more "
                              "than this")
    adopt_p: float = _f(0.1, "... and only if a paired randomisation test over the validation queries gives a "
                             "one-sided p below this (1: the mean alone decides): a gain within the noise of a "
                             "few hundred queries is no gain")
    model: str = _f("default", "encoder the retriever and re-ranker start from (default: embedded MiniLM)")
    max_length: int = _f(128, "passage tokens for indexing and retriever training")
    query_max_length: int = _f(32, "query tokens")
    reranker_max_length: int = _f(160, "tokens of a (query, passage) pair")
    top_n: int = _f(50, "zero-shot candidates mined per training query")
    list_size: int = _f(6, "passages per training list (1 positive + negatives)")
    batch_size: int = _f(8, "lists per step")
    retriever_warmup_steps: int = _f(0, "retriever-alone steps before everything trained (0: off): the re-ranker "
                                         "warm-up grows from this retriever and joint training starts from it, as "
                                         "RocketQAv2 starts from trained models")
    warmup_steps: int = _f(30, "re-ranker warm-up steps (reranker mode) before joint training")
    joint_steps: int = _f(20, "joint training steps")
    retriever_warmup_epochs: float = _f(0.0, "if > 0: retriever_warmup_steps = this many passes over the training "
                                             "lists (sizes relative to the data)")
    warmup_epochs: float = _f(0.0, "if > 0: warmup_steps from passes over the training lists")
    joint_epochs: float = _f(0.0, "if > 0: joint_steps from passes over the training lists")
    budget_minutes: float = _f(0.0, "if > 0: the training stages (and the denoising they need) shrink, all by "
                                    "one factor, until the plan fits this wall time on this machine's rates")
    min_steps: int = _f(5, "with budget_minutes: no training stage shrinks below this many steps")
    denoise_queries: int = _f(-1, "training queries the re-ranker denoises: -1 as many as the joint stage draws "
                                  "(joint_steps x lists per step, held-out ones included), 0 all, N that many; "
                                  "the joint stage trains on those")
    retriever_only_steps: int = _f(0, "steps of the retriever-only baseline (0: skip it)")
    index_retriever_warmup: bool = _f(True, "with retriever_warmup_steps and no retriever-only baseline: index the "
                                            "warm-up retriever (trained alone) and report it as `retriever-only`, "
                                            "so the report shows what the joint stage adds to it")
    retriever_only_equal_steps: bool = _f(False, "with retriever_warmup_steps: the `retriever-only` row continues the "
                                                 "warm-up alone for joint_steps on the joint's lists in the joint "
                                                 "stage's shape (its own listwise CE in place of CE + KL): the joint "
                                                 "retriever's budget, step for step")
    peers: str = _f("", "result.json of benchmarks/peers_scifact.py: its systems join the report as peer rows")
    denoise: bool = _f(True, "denoise the lists with the warmed-up re-ranker (hybrid lists: undenoised + denoised "
                             "pools, pseudo-positives) before joint training")
    denoise_top: int = _f(10, "candidates per training query the re-ranker scores for denoising (0: all top_n)")
    calibration_max_queries: int = _f(100, "held-out training queries whose labelled pairs calibrate the denoiser, "
                                           "at most (0: all held out)")
    low: float = _f(0.1, "denoising: calibrated probability below which a candidate is a clean negative")
    high: float = _f(0.9, "denoising: probability above which a candidate becomes a pseudo-positive")
    low_from_positives: float = _f(0.0, "denoising, if > 0: low = this quantile of the held-out labelled positives' "
                                        "probabilities (chosen on held-out queries instead of fixed)")
    reranker_arch: str = _f("gated", "re-ranker built on the body: gated (cold-start safe) or cross")
    lexical_fit_queries: int = _f(100, "gated re-ranker: after its warm-up, its lexical weight is chosen by re-ranking "
                                       "the first-stage top-k of this many training queries (never validation "
                                       "ones) with each weight on a grid (0: off; tandem.train.lexical)")
    reranker: str = _f("", "a trained cross-encoder to start the re-ranker from (Hugging Face id or directory, e.g. "
                           "cross-encoder/ms-marco-MiniLM-L-6-v2, or a sentence-transformers CrossEncoder "
                           "directory); default: grow one from the retriever")
    rerank_k: int = _f(20, "candidates the joint re-ranker re-scores per test query (the deepest tried)")
    rerank_depths: list = _f(None, "re-ranking depths tried on validation, the best used on test (default: "
                                   "[rerank_k]); a depth must be <= rerank_k")
    bm25_stemmer: str = _f("english", "BM25's Snowball stemmer (PyStemmer), or none: measured better stemmed on both "
                                      "datasets (BENCHMARKS.md)")
    hybrid: bool = _f(True, "also report the hybrid first stage: BM25 + joint retriever, reciprocal rank fusion")
    hybrid_rerank: bool = _f(True, "with hybrid: also re-rank the hybrid top rerank_k with the joint re-ranker "
                                   "(pairs shared with the dense top-k are scored once; ~45% more pairs)")
    seed: int = _f(1, "seed of training")
    heldout_fraction: float = _f(0.1, "training lists held out for the curves and the kl_gate")
    eval_every: int = _f(10, "held-out evaluation every N steps")
    val_every: int = _f(0, "validate each training stage's models every N steps while it trains, as after the stage "
                           "(the retriever over the whole corpus, the re-ranker over its first stage's validation "
                           "top-k), and keep each model's best state, its start included (early stopping's "
                           "choice; each validation costs a corpus encoding or a re-ranking: the plan counts "
                           "them); 0: validate after each stage only")
    mine: dict = _f(None, "extra mining and denoising settings (see tandem mine-settings) over the ones this recipe "
                          "sets (top_n, low, high, denoise_top, ...), for the lists and denoise stages")
    train: dict = _f(None, "extra training settings (see tandem train-settings) for every training stage")
    retriever_warmup_train: dict = _f(None, "training settings for the retriever warm-up only (over list_size, "
                                            "batch_size, train)")
    warmup_train: dict = _f(None, "training settings for the re-ranker warm-up only (over list_size, batch_size, "
                                  "train)")
    joint_train: dict = _f(None, "training settings for the joint stage only (over list_size, batch_size, train)")
    plan_passages: int = _f(0, "--dry-run: plan for this corpus size instead of the data's (with the two below, "
                               "the data need not be present)")
    plan_train_queries: int = _f(0, "--dry-run: plan for this many training queries")
    plan_eval_queries: int = _f(0, "--dry-run: plan for this many evaluation queries")
    devices: int = _f(1, "--dry-run cost model: processes/GPUs the training and encoding stages are spread over")
    rates: dict = _f(None, "cost model: throughputs of ONE device (encode_per_s at 128 passage tokens, "
                           "train_seq_per_s at 128 tokens, rerank_pairs_per_s and rerank_train_pairs_per_s at 160 "
                           "tokens); default: measured on this machine (measure_rates), else this project's 2-core "
                           "CPU's")
    measure_rates: bool = _f(True, "with budget_minutes or --dry-run and no rates given: measure this machine's "
                                   "throughputs with a short probe at the recipe's shapes (~10-20 s on a 2-core "
                                   "CPU, cached per machine in $TANDEM_CACHE/rates.json), so that the budget means "
                                   "the same wall time on any machine; false: this project's fixed CPU rates")

    def mine_settings(self, n_train: int):
        """The mining and denoising settings of the lists and denoise stages: the recipe's own fields, then
        ``mine`` (any :class:`~tandem.mine.MineSettings` field; an unknown one is a ConfigError)."""
        from tandem.mine import MineSettings
        from tandem.settings import load_settings

        own = {"top_n": self.top_n, "low": self.low, "high": self.high, "denoise_top": self.denoise_top,
               "split": self.train_split, "low_from_positives": self.low_from_positives,
               "calibration_fraction": self.heldout_fraction if 0 < self.heldout_fraction < 1 else 0.1,
               "denoise_queries": denoised_queries(self, n_train),
               "calibration_max_queries": self.calibration_max_queries}
        try:
            ms = load_settings(MineSettings, overrides={**own, **(self.mine or {})})
            ms.check()
        except ConfigError as e:
            raise ConfigError(f"mine: {e}") from None
        return ms

    def train_overrides(self, mode: str, steps: int, stage: str = "") -> dict[str, Any]:
        """The training settings of a stage: the recipe's, then ``train``, then the stage's own."""
        own = {"retriever-warmup": self.retriever_warmup_train, "warmup": self.warmup_train,
               "joint": self.joint_train}.get(stage) or {}
        return {"mode": mode, "max_steps": steps, "list_size": self.list_size, "batch_size": self.batch_size,
                "query_max_length": self.query_max_length, "passage_max_length": self.max_length,
                "reranker_max_length": self.reranker_max_length, "seed": self.seed,
                "heldout_fraction": self.heldout_fraction, "eval_every": self.val_every or self.eval_every,
                "reranker_arch": self.reranker_arch, **(self.train or {}), **own}

    @property
    def retriever_only(self) -> str:
        """Where the `retriever-only` row comes from: ``steps`` (trained alone from the start model for
        retriever_only_steps), ``equal-steps`` (the warm-up continued alone for joint_steps), ``warmup`` (the
        warm-up itself) or ``""`` (no such row)."""
        if self.retriever_only_steps:
            return "steps"
        if self.retriever_warmup_steps and self.retriever_only_equal_steps:
            return "equal-steps"
        if self.retriever_warmup_steps and self.index_retriever_warmup:
            return "warmup"
        return ""

    @property
    def fits_lexical_weight(self) -> bool:
        """Whether the re-ranker warm-up ends with the lexical-weight fit: asked for, and a gated re-ranker grown
        here (a given cross-encoder has no such weight)."""
        return self.lexical_fit_queries > 0 and not self.reranker and self.reranker_arch == "gated"

    def stage_shape(self, stage: str) -> tuple[int, int]:
        """(lists per step, passages per list) of a training stage."""
        o = self.train_overrides("", 0, stage)
        return int(o["batch_size"]), int(o["list_size"])


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> RecipeConfig:
    from tandem.settings import load_settings

    return load_settings(RecipeConfig, path, overrides)


def shipped_config(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise UsageError(f"no shipped config {name!r}; available: {sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))}")
    return path


class Stages:
    """Runs named stages once; a stage whose ``done.json`` records the same settings is skipped.

    The numeric precision this process runs models at (``--precision`` / ``TANDEM_PRECISION``) is part
    of every stage's settings: an fp32 run does not reuse the stages of a bf16 one.
    """

    def __init__(self, out: Path, plan: dict[str, float] | None = None, rank: int = 0):
        from tandem.utils import inference_device, resolve_precision

        self.out = out
        self.precision = resolve_precision(None, inference_device())
        self.seconds: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}  # bytes, sampled while each stage ran (its done.json keeps it)
        self.keys: dict[str, str] = {}
        self.ran: list[str] = []  # the stages this invocation ran (not found done)
        self.plan = plan or {}
        self.t0 = time.perf_counter()
        self.rank = rank  # under torchrun: rank 0 runs the single-process stages, every rank the training ones

    def run(self, name: str, settings: dict[str, Any], fn: Callable[[Path], None], after: tuple[str, ...] = (),
            every_rank: bool = False) -> Path:
        """Run ``fn(stage_dir)`` unless done with the same settings and the same upstream stages.

        Under torchrun, ``every_rank`` stages (training) run on all processes, the others on rank 0
        while the rest wait; rank 0 alone writes the stage records.
        """
        from tandem.train.distributed import barrier

        barrier()
        key_src = json.dumps({"settings": settings, "after": [self.keys[a] for a in after],
                              "precision": self.precision}, sort_keys=True, default=str)
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        self.keys[name] = key
        stage_dir = self.out / name
        done, started = stage_dir / "done.json", stage_dir / "started.json"
        if done.exists() and read_json(done).get("key") == key:
            self.seconds[name] = float(read_json(done).get("seconds", 0.0))
            self.peak_rss[name] = int(read_json(done).get("peak_rss_bytes", 0))
            log.info("stage %-16s up to date (%.0fs when run), skipped", name, self.seconds[name])
            return stage_dir
        main = self.rank == 0
        if main and stage_dir.exists() and not (started.exists() and read_json(started).get("key") == key
                                                and not done.exists()):
            shutil.rmtree(stage_dir)  # settings changed: start afresh (a killed run of the same settings resumes)
        left = sum(v for k, v in self.plan.items() if k not in self.seconds)
        if main:
            log.info("stage %-16s running (elapsed %.0fs, estimated left %.0fs)", name, time.perf_counter() - self.t0,
                     left)
            stage_dir.mkdir(parents=True, exist_ok=True)
            write_json(started, {"key": key})
        barrier()
        t0 = time.perf_counter()
        done_n = len(self.seconds) + 1
        label = f"[{done_n}/{len(self.plan) or '?'} {name}, ~{_minutes(left)} left]"
        from tandem.utils import MemoryWatch, progress_context, release_memory

        release_memory()  # what the last stage freed goes back to the OS before this one's peak is measured
        with MemoryWatch() as watch:
            if main or every_rank:
                with progress_context(label):
                    fn(stage_dir)
        self.seconds[name] = time.perf_counter() - t0
        self.ran.append(name)
        self.peak_rss[name] = watch.peak
        if main:
            write_json(done, manifest("stage", name=name, key=key, settings=settings, seconds=self.seconds[name],
                                      peak_rss_bytes=watch.peak))
            log.info("stage %-16s done in %.0fs (peak resident memory %.2f GB)", name, self.seconds[name],
                     watch.peak / 1e9)
        barrier()
        return stage_dir


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def denoised_queries(cfg: RecipeConfig, n_train: int) -> int:
    """How many training queries the denoise stage scores (and the joint stage then trains on)."""
    if not cfg.denoise:
        return 0
    if cfg.denoise_queries == 0:
        return n_train
    if cfg.denoise_queries > 0:
        return min(n_train, cfg.denoise_queries)
    jb, _ = cfg.stage_shape("joint")  # the calibration queries, then one pass of the joint stage's draws
    return min(n_train, calibration_queries(cfg, n_train) + cfg.joint_steps * jb)


def calibration_queries(cfg: RecipeConfig, n_train: int) -> int:
    """How many held-out training queries calibrate the denoiser."""
    held = math.ceil(cfg.heldout_fraction * n_train)
    return min(held, cfg.calibration_max_queries) if cfg.calibration_max_queries > 0 else held


def rerank_depths(cfg: RecipeConfig) -> list[int]:
    depths = sorted(set(cfg.rerank_depths or [cfg.rerank_k]))
    if not depths or depths[0] < 1 or depths[-1] > cfg.rerank_k:
        raise ConfigError(f"rerank_depths {cfg.rerank_depths}: each depth must be in [1, rerank_k = {cfg.rerank_k}]")
    return depths


def training_cost_factor(cfg: RecipeConfig, stage: str, model: str = "retriever") -> float:
    """What a model's training steps in ``stage`` cost against plain ones: gradient caching (``chunk_size``) runs a
    model forward once more, ~1/3 of its training cost (the retriever's, and the re-ranker's unless it runs
    ``reranker_micro_lists``, exact without caching); without attention dropout the fused attention kernel runs
    (:data:`FUSED_ATTENTION_SPEEDUP`). The plan multiplies by it; :mod:`tandem.train.rates` divides a probed step by
    it."""
    from tandem.train.config import reranker_dropout

    o = cfg.train_overrides("", 0, stage)
    micro = int(o.get("reranker_micro_lists", 0) or 0)
    cached = 1.0 if not int(o.get("chunk_size", 0) or 0) or (model == "reranker" and 0 < micro < int(o["batch_size"])) \
        else 4 / 3
    drop = float(o.get("attention_dropout", -1.0))
    if model == "reranker":
        drop = reranker_dropout(drop, float(o.get("reranker_attention_dropout", -1.0)))
    return cached / (FUSED_ATTENTION_SPEEDUP if drop == 0 else 1.0)


def plan(cfg: RecipeConfig, n_passages: int, n_train: int, n_test: int, n_val: int = 0,
         positives: float = 1.15) -> dict[str, float]:
    """Estimated seconds per stage from measured throughputs (``cfg.rates`` or this CPU's), scaled by length.

    Encoding, re-ranking and attention costs are taken as linear in length (a slight underestimate
    for long inputs); training and encoding stages are divided over ``cfg.devices``. ``n_val``
    validation queries are searched beside the test queries and their top-k re-ranked; ``positives`` is the mean
    number of labelled positives of a training query (calibration_pool positives scores up to five of them).
    """
    ms = cfg.mine_settings(max(1, n_train))  # (and `mine:` checked early)
    # the calibration queries' extra pairs: the rest of their candidate list, or (calibration_pool positives) up
    # to calibration_positives labelled positives
    per_top = cfg.denoise_top or cfg.top_n
    calibration_pairs = (cfg.top_n - per_top if ms.calibration_pool == "candidates"
                         else min(positives, ms.calibration_positives) if ms.calibration_positives else positives)
    rates = {**default_rates(), **(cfg.rates or {})}
    dev = max(1, cfg.devices)
    enc = rates["encode_per_s"] * 128 / cfg.max_length * dev
    seq = rates["train_seq_per_s"] * 128 / cfg.max_length * dev
    pairs = rates["rerank_pairs_per_s"] * 160 / cfg.reranker_max_length * dev
    (wb, wl), (jb, jl) = cfg.stage_shape("warmup"), cfg.stage_shape("joint")
    queries = enc * cfg.max_length / cfg.query_max_length  # queries/s: short texts
    searched = n_test + n_val
    # hybrid: the fused top-k adds ~45% new pairs to the dense top-k (measured on SciFact, k = 20)
    extra = HYBRID_EXTRA_PAIRS if cfg.hybrid and cfg.hybrid_rerank else 1.0
    factor = partial(training_cost_factor, cfg)
    # re-ranker training pairs: at their own measured rate where the rates have one (the probe's), else at the
    # retriever's per-sequence rate (the constants, measured so)
    rt = rates["rerank_train_pairs_per_s"] * 160 / cfg.reranker_max_length * dev \
        if rates.get("rerank_train_pairs_per_s") else seq

    def heldout_eval(stage: str, steps: int, scorers: str) -> float:
        """Seconds of a training stage's held-out list evaluations (at the start, every eval_every, at the end)."""
        o = cfg.train_overrides("", steps, stage)
        lists = round(float(o.get("heldout_fraction", 0.0)) * n_train)
        lists = min(lists, int(o.get("heldout_eval_lists", 0) or lists))
        every = int(o.get("eval_every", 0) or 0)
        evals = 2 + (steps // every if every else 0)
        per_list = int(o["list_size"]) * (("r" in scorers) / enc + ("c" in scorers) / pairs)
        return evals * lists * per_list

    def validations(stage: str, steps: int, scorers: str) -> float:
        """Seconds of validating a stage's models while it trains (val_every): at the start, every val_every steps
        and at the end, the retriever over the corpus, the re-ranker over the validation top-k."""
        if not (cfg.val_every and n_val):
            return 0.0
        evals = 2 + max(0, steps - 1) // cfg.val_every
        per = ("r" in scorers) * (n_passages / enc + n_val / queries) \
            + ("c" in scorers) * n_val * max(rerank_depths(cfg)) / pairs
        return evals * per

    deeper_pairs = max(0, denoised_queries(cfg, n_train) - calibration_queries(cfg, n_train)) * DEEPENED_QUERIES \
        * max(0, ms.denoise_depth - cfg.top_n) * DEEPENED_SCORED  # (a search to the depth costs ~nothing)
    lexical_fit = min(cfg.lexical_fit_queries, n_train) * cfg.top_n / pairs + 5 if cfg.fits_lexical_weight else 0.0
    est = {"bm25": 5.0 + n_passages / 20_000, "zs-index": n_passages / enc + 10, "zero-shot": searched / queries + 5,
           "hybrid-zero-shot": 2.0 + searched / 1000,
           "lists": n_train / queries + 5,
           "warmup": cfg.warmup_steps * wb * wl / rt * factor("warmup", "reranker")
           + 30 + heldout_eval("warmup", cfg.warmup_steps, "c") + validations("warmup", cfg.warmup_steps, "c")
           + lexical_fit,
           "denoise": ((denoised_queries(cfg, n_train) * per_top + calibration_queries(cfg, n_train)
                        * calibration_pairs + deeper_pairs) / pairs + 10)
           if cfg.denoise else 0.0,
           "joint": cfg.joint_steps * jb * (jl * factor("joint", "reranker") / rt + (jl + 1) * factor("joint") / seq)
           + 30
           + heldout_eval("joint", cfg.joint_steps, "rc") + validations("joint", cfg.joint_steps, "rc"),
           "joint-index": n_passages / enc + 10,
           "rerank": n_test * cfg.rerank_k * extra / pairs + 5}
    if n_val:
        est["val-rerank"] = n_val * max(rerank_depths(cfg)) * extra / pairs + 5
    if cfg.hybrid:
        est["hybrid"] = 2.0 + searched / 1000

    def retriever_alone(steps: int, lists_per_step: int, list_size: int, stage: str = "") -> float:
        """Seconds of retriever-only training: a query costs query_max_length / max_length of a passage."""
        return steps * lists_per_step * (list_size + cfg.query_max_length / cfg.max_length) / seq * factor(stage) + 20

    if cfg.retriever_warmup_steps:
        est["retriever-warmup"] = retriever_alone(cfg.retriever_warmup_steps, *cfg.stage_shape("retriever-warmup"),
                                                  stage="retriever-warmup") \
            + heldout_eval("retriever-warmup", cfg.retriever_warmup_steps, "r") \
            + validations("retriever-warmup", cfg.retriever_warmup_steps, "r")
        est["retriever-warmup-index"] = n_passages / enc + 10  # validated before anything grows from it
    if cfg.retriever_only == "steps":
        est["retriever-only"] = (cfg.retriever_only_steps * cfg.batch_size * (cfg.list_size + 1) / seq
                                  + n_passages / enc + validations("retriever-only", cfg.retriever_only_steps, "r"))
    elif cfg.retriever_only == "equal-steps":  # the joint stage's retriever half, then an index
        est["retriever-alone"] = retriever_alone(cfg.joint_steps, jb, jl, "joint") \
            + validations("joint", cfg.joint_steps, "r")
        est["retriever-alone-index"] = n_passages / enc + 10
    return {k: est[k] for k in sorted(est,
                                      key=lambda k: STAGE_ORDER.index(k) if k in STAGE_ORDER else len(STAGE_ORDER))}


STAGE_ORDER = ["bm25", "zs-index", "zero-shot", "hybrid-zero-shot", "lists", "retriever-warmup",
               "retriever-warmup-index", "warmup", "denoise", "joint", "joint-index", "hybrid", "val-rerank", "rerank",
               "retriever-alone", "retriever-alone-index", "retriever-only"]  # as they run
STEP_SETTINGS = {"retriever_warmup_steps": ("retriever_warmup_epochs", "retriever-warmup"),
                 "warmup_steps": ("warmup_epochs", "warmup"), "joint_steps": ("joint_epochs", "joint")}


def size_training(cfg: RecipeConfig, n_passages: int, n_train: int, n_test: int,
                  n_val: int = 0, positives: float = 1.15) -> tuple[RecipeConfig, dict[str, Any]]:
    """The recipe with its training steps fixed for this data: epochs turned into steps, then (with
    ``budget_minutes``) every training stage shrunk by one factor until the plan fits the budget. Where even
    ``min_steps`` would not fit, the evaluation shrinks first (the deepest re-ranking depth, then the
    validation queries down to 100) and the training then takes what is left.

    Returns the sized config and what was decided (``steps``, ``epochs`` over the training lists,
    ``factor``, ``evaluation_shrunk``, ``planned_seconds``, ``over_budget``), which ``--dry-run`` and the
    report show.
    """
    n_lists = max(1, n_train - round(cfg.heldout_fraction * n_train))  # held-out queries train nothing
    wanted = {}
    for key, (epochs_key, stage) in STEP_SETTINGS.items():
        epochs = getattr(cfg, epochs_key)
        wanted[key] = max(1, math.ceil(epochs * n_lists / cfg.stage_shape(stage)[0])) if epochs > 0 \
            else getattr(cfg, key)

    base = cfg

    def at(factor: float) -> RecipeConfig:
        return replace(base, **{k: max(min(v, cfg.min_steps), int(factor * v)) if v else 0 for k, v in wanted.items()})

    def total(c: RecipeConfig) -> float:
        return sum(plan(c, n_passages, n_train, n_test, n_val, positives).values())

    budget = 60.0 * cfg.budget_minutes
    shrunk = []
    # over budget even at min_steps: the evaluation shrinks first, the deepest re-ranking depth (the recipe then
    # cannot choose it), then the validation queries (not below 100: fewer cannot tell models apart)
    while budget > 0 and total(at(0.0)) > budget:
        depths = rerank_depths(base)
        if len(depths) > 1:
            base = replace(base, rerank_depths=depths[:-1], rerank_k=depths[-2])
            shrunk.append(f"rerank_depths {depths[:-1]}")
        elif n_val > 100:
            n_val = max(100, n_val // 2)
            base = replace(base, val_max_queries=n_val)
            shrunk.append(f"val_max_queries {n_val}")
        else:
            break
    sized, factor = at(1.0), 1.0
    if budget > 0 and total(sized) > budget:  # then every training stage by one factor
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(at(mid)) <= budget else (lo, mid)
        sized, factor = at(lo), lo
    steps = {k: getattr(sized, k) for k in STEP_SETTINGS}
    info = {"training_lists": n_lists, "steps": steps, "factor": round(factor, 4), "evaluation_shrunk": shrunk,
            "epochs": {k: round(v * sized.stage_shape(STEP_SETTINGS[k][1])[0] / n_lists, 3) for k, v in steps.items()},
            "denoised_queries": denoised_queries(sized, n_train), "planned_seconds": round(total(sized), 1),
            "budget_seconds": budget, "over_budget": bool(budget and total(sized) > budget)}
    return sized, info


def model_shape(model: str | None) -> dict[str, int]:
    """hidden size, layers, heads and parameter count of an encoder, from its config (no weights loaded)."""
    from transformers import AutoConfig

    from tandem.models.hf import resolve_model

    c = AutoConfig.from_pretrained(resolve_model(model))
    h, layers, heads = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
    inter = getattr(c, "intermediate_size", 4 * h)
    params = c.vocab_size * h + getattr(c, "max_position_embeddings", 512) * h + layers * (4 * h * h + 2 * h * inter)
    return {"hidden": h, "layers": layers, "heads": heads, "params": int(params)}


# the recipe's process before a stage's own models and tensors: Python, torch, tokenizers, the dataset, BM25, the
# runs (measured on the demo, 2-core CPU: 0.55 GB in a bare `tandem train`, ~1.0 GB inside the recipe)
PROCESS_BASE_BYTES = 1.0e9
# (gated re-ranker?, attention dropout off?) -> k of memory_plan, fitted to benchmarks/train_memory.py (fp32, CPU)
# (attention matrices kept whatever the dropout: the gated re-ranker, attention dropout 0) -> activation factor
ACTIVATION_FIT = {(False, False): 1.15, (False, True): 1.2, (True, False): 2.1, (True, True): 1.75}


def memory_plan(cfg: RecipeConfig, n_passages: int, shape: dict[str, int], gpu: bool) -> dict[str, float]:
    """Estimated peak memory (bytes) per stage: on a GPU the device's, on a CPU the process's resident memory.

    Training: each trained model's weights, gradients and AdamW moments (16 bytes a parameter) plus the
    activations of the sequences alive at once: ``k (34 h + 5 a s)`` bytes per token and layer in 16-bit
    (Korthikanti et al. 2022), twice that in fp32, or ``k 34 h`` where attention dropout is off and PyTorch's
    fused attention stores no attention matrices. ``k`` (``ACTIVATION_FIT``) was fitted to
    ``benchmarks/train_memory.py`` on a 2-core CPU in fp32; the gated re-ranker's learned attention bias keeps
    its attention matrices either way. Alive at once: the re-ranker's ``reranker_micro_lists`` lists (else its
    ``chunk_size`` sequences with gradient caching, else the whole batch) and the retriever's ``chunk_size``
    sequences (else its whole batch, still alive while the re-ranker runs). Inference: one layer's transients
    of a batch (32 sequences). Indexing adds the corpus's fp32 vectors. On a CPU every stage adds the process's
    own memory (``PROCESS_BASE_BYTES``) and each loaded model's weights.
    """
    from tandem.models.architectures import architecture
    from tandem.train.config import reranker_dropout
    from tandem.utils import resolve_precision

    h, layers, heads, params = shape["hidden"], shape["layers"], shape["heads"], shape["params"]
    width = 1 if gpu or resolve_precision(None, "cpu") == "bf16" else 2  # bytes per activation / 2

    def per_token(length: int, arch: str, attention_dropout: float) -> float:  # stored activations, all layers
        fused_kernel = architecture(arch).fused_attention if arch else True  # "": the retriever, a plain encoder
        fused = attention_dropout == 0 and fused_kernel
        k = ACTIVATION_FIT[(not fused_kernel, attention_dropout == 0)]
        return k * width * (34 * h + (0 if fused else 5 * heads * length)) * layers

    def transient(length: int, batch: int = 32) -> float:  # inference: one layer's tensors of a batch
        return width * 2 * batch * length * (10 * h + 3 * heads * length)

    def live(stage: str, retriever: bool, reranker: bool) -> float:
        o = cfg.train_overrides("", 0, stage)
        chunk = int(o.get("chunk_size", 0) or 0)
        micro = int(o.get("reranker_micro_lists", 0) or 0)
        batch = max(1, int(o["batch_size"]) // max(1, cfg.devices))
        g, plen, qlen = int(o["list_size"]), int(o["passage_max_length"]), int(o["query_max_length"])
        rlen, drop = int(o["reranker_max_length"]), float(o.get("attention_dropout", -1.0))
        r = ce = 0.0
        if retriever:
            r = chunk * plen * per_token(plen, "", drop) if chunk else batch * (
                g * plen * per_token(plen, "", drop) + qlen * per_token(qlen, "", drop))
        if reranker:
            seqs = micro * g if 0 < micro < batch else (min(chunk, batch * g) if chunk else batch * g)
            ce = seqs * rlen * per_token(rlen, str(o.get("reranker_arch", cfg.reranker_arch)),
                                         reranker_dropout(drop, float(o.get("reranker_attention_dropout", -1.0))))
        return max(r, ce) if chunk else r + ce  # gradient caching frees the retriever's graph before the re-ranker's

    weights, states = 4.0 * params, 16.0 * params
    base = 0.0 if gpu else PROCESS_BASE_BYTES
    vectors = 4.0 * n_passages * h
    index = base + weights + vectors + transient(cfg.max_length)
    plan = {"warmup": base + states + live("warmup", False, True),
            "joint": base + 2 * states + live("joint", True, True),
            "zs-index": index, "joint-index": index,
            "denoise": base + weights + transient(cfg.reranker_max_length),
            "rerank": base + weights + transient(cfg.reranker_max_length)}
    if cfg.retriever_only == "steps":
        plan["retriever-only"] = base + states + live("", True, False)
    if cfg.retriever_only == "equal-steps":
        plan["retriever-alone"] = base + states + live("joint", True, False)
    if cfg.retriever_warmup_steps:
        plan["retriever-warmup"] = base + states + live("retriever-warmup", True, False)
        plan["retriever-warmup-index"] = index
    return plan


def eval_split_of(cfg: RecipeConfig, directory: Path) -> str:
    """The split the report evaluates on: ``eval_split``, or with ``auto`` test where the data has it, else dev."""
    if cfg.eval_split != "auto":
        return cfg.eval_split
    from tandem.data.dataset import splits

    have = splits(directory)
    for name in ("test", "dev"):
        if name in have:
            return name
    raise ConfigError(f"{directory}: eval_split=auto finds neither a test nor a dev split (splits: {have or 'none'}); "
                      "name one with eval_split=SPLIT")


@dataclass
class Validation:
    """The queries that decide adoption: ``source`` is ``dev``-like (a split), ``heldout`` or ``none``."""

    source: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    why: str

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.queries)).encode()).hexdigest()[:16] if self.queries else ""


def heldout_share(cfg: RecipeConfig, train_ds) -> float:
    """The least ``heldout_fraction`` (to 1e-4) under which ``heldout_min_queries`` training queries with a labelled
    positive (at most ``val_max_queries``) are held out, by the hash order held-out queries follow, and not above
    ``heldout_max_fraction``."""
    from tandem.train.lists import qid_unit

    units = sorted(qid_unit(q) for q, d in train_ds.qrels.items()
                   if q in train_ds.queries and any(r > 0 for r in d.values()))
    want = min(cfg.heldout_min_queries, cfg.val_max_queries, len(units))
    share = math.floor(units[want - 1] * 1e4 + 1) / 1e4 if want else 0.0  # (held out: unit < share)
    return max(cfg.heldout_fraction, min(cfg.heldout_max_fraction, share))


def choose_validation(cfg: RecipeConfig, directory: Path, train_ds, eval_split: str) -> Validation:
    """Validation queries: a dev split (not the one reported), else the training queries the trainer holds out
    (by a hash of the id, so they are never trained on), else none, with the reason."""
    from tandem.data import load_beir
    from tandem.data.dataset import splits
    from tandem.train.lists import first_by_hash, heldout_qids

    def capped(queries: dict[str, str], qrels) -> tuple[dict[str, str], dict]:
        keep = set(first_by_hash([q for q in queries if any(r > 0 for r in qrels.get(q, {}).values())],
                                 cfg.val_max_queries))
        return {q: t for q, t in queries.items() if q in keep}, {q: d for q, d in qrels.items() if q in keep}

    want = cfg.validation
    if want == "none":
        return Validation("none", {}, {}, "validation=none: trained models are used without a check")
    have = splits(directory)
    if want == "auto":
        want = "dev" if "dev" in have and eval_split != "dev" and cfg.train_split != "dev" else "heldout"
    if want != "heldout":
        if want == eval_split:
            raise ConfigError(f"validation={want} is the split the report evaluates on: choose on other queries")
        ds = load_beir(directory, want, corpus=train_ds.corpus)
        q, r = capped(ds.split_queries(), ds.qrels)
        return Validation(want, q, r, f"the {want} split ({len(q)} queries)")
    n = sum(1 for q in train_ds.qrels if q in train_ds.queries)
    if cfg.heldout_fraction <= 0 or n < cfg.validation_min_queries:
        return Validation("none", {}, {}, f"validation is impossible: no dev split and {n} training queries "
                                          f"(fewer than {cfg.validation_min_queries} to hold any out, or "
                                          f"heldout_fraction = 0): trained models are used without a check")
    held = heldout_qids([q for q in train_ds.qrels if q in train_ds.queries], cfg.heldout_fraction)
    q, r = capped({k: train_ds.queries[k] for k in held}, {k: train_ds.qrels[k] for k in held})
    return Validation("heldout", q, r, f"{len(q)} held-out training queries (heldout_fraction "
                                       f"{cfg.heldout_fraction}; never trained on)")


def _rates_for(cfg: RecipeConfig, train_ds, dry_run: bool) -> tuple[RecipeConfig, dict[str, Any]]:
    """The recipe with the cost model's rates settled, and where they came from (``rates``, ``rates_source``:
    given, measured or fixed, ``rates_note``): measured on this machine (:mod:`tandem.train.rates`) where the plan
    decides something (a budget, or a dry run), none are given and the data is here; under torchrun the fixed
    rates, so that every process sizes the stages alike."""
    from tandem.train.distributed import world

    if cfg.rates:
        source, note = "given", "the given rates"
    elif cfg.measure_rates and train_ds is not None and (cfg.budget_minutes > 0 or dry_run) and world()[1] == 1:
        from tandem.train.rates import machine_rates

        try:
            probe = machine_rates(cfg, train_ds.corpus, train_ds.queries)
        except (RuntimeError, ValueError, OSError) as e:  # (a plan is an estimate: the recipe runs without one)
            log.warning("rates: the probe failed (%s: %s); planning on the fixed rates", type(e).__name__, e)
            source, note = "fixed", f"this project's fixed 2-core CPU rates (the probe failed: {type(e).__name__})"
        else:
            cfg = replace(cfg, rates=probe["rates"])
            source = "measured"
            note = (f"this machine's rates ({probe['key']['machine']}, {probe['key']['precision']}), measured "
                    f"{probe['measured_at']} in {probe['seconds']} s" + (" (cached)" if probe["cached"] else ""))
    else:
        source, note = "fixed", "this project's fixed 2-core CPU rates (measure_rates: false, no data, or torchrun)"
    return cfg, {"rates": {**default_rates(), **(cfg.rates or {})}, "rates_source": source, "rates_note": note}


def run_recipe(cfg: RecipeConfig, out: str | Path, progress: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """Run (or, with ``dry_run``, only plan) the recipe; returns the report (or the plan). Its stages train and
    infer in one process, so bf16 inference runs under autocast while it runs (no second copy of the weights;
    :func:`tandem.utils.set_bf16_inference_copy`), and the process's setting is restored after."""
    from tandem.utils import set_bf16_inference_copy

    before = set_bf16_inference_copy(False)
    try:
        return _run_recipe(cfg, out, progress, dry_run)
    finally:
        set_bf16_inference_copy(before)


def _run_recipe(cfg: RecipeConfig, out: str | Path, progress: bool, dry_run: bool) -> dict[str, Any]:
    from tandem.data import load_beir, resolve_dataset
    from tandem.train.distributed import world

    t_start = time.perf_counter()
    out = Path(out)
    val = None
    if dry_run and cfg.plan_passages and cfg.plan_train_queries and cfg.plan_eval_queries:
        sizes = (cfg.plan_passages, cfg.plan_train_queries, cfg.plan_eval_queries,
                 min(cfg.val_max_queries, round(cfg.heldout_fraction * cfg.plan_train_queries)))  # what-if: no data
    else:
        directory = resolve_dataset(cfg.data)
        cfg = replace(cfg, eval_split=eval_split_of(cfg, directory))
        train_ds = load_beir(directory, cfg.train_split)
        test_ds = load_beir(directory, cfg.eval_split, corpus=train_ds.corpus)
        val = choose_validation(cfg, directory, train_ds, cfg.eval_split)
        if val.source == "heldout" and len(val.queries) < min(cfg.heldout_min_queries, cfg.val_max_queries):
            cfg = replace(cfg, heldout_fraction=heldout_share(cfg, train_ds))  # (a superset: the same hash order)
            val = choose_validation(cfg, directory, train_ds, cfg.eval_split)
        sizes = (cfg.plan_passages or len(train_ds.corpus), cfg.plan_train_queries or len(train_ds.qrels),
                 cfg.plan_eval_queries or len(test_ds.qrels), len(val.queries),
                 sum(map(len, train_ds.qrels.values())) / max(1, len(train_ds.qrels)))
    rerank_depths(cfg)
    peer_rows(cfg.peers)  # a damaged peers file fails now, not after the training
    cfg.mine_settings(max(1, sizes[1]))  # (a bad `mine:` mapping fails before the probe)
    cfg, rates_info = _rates_for(cfg, train_ds if val is not None else None, dry_run)
    cfg, sizing = size_training(cfg, *sizes)
    sizing.update(rates_info)
    if val is not None and cfg.val_max_queries < len(val.queries):  # the budget asked for fewer
        val = choose_validation(cfg, directory, train_ds, cfg.eval_split)
        sizes = (*sizes[:3], len(val.queries), *sizes[4:])
    estimate = plan(cfg, *sizes)
    if dry_run:
        import torch

        gpu = torch.cuda.is_available() or rates_info["rates_source"] == "given"
        memory = memory_plan(cfg, sizes[0], model_shape(None if cfg.model == "default" else cfg.model), gpu)
        return {"plan_seconds": estimate, "plan_memory_bytes": memory, "total_seconds": sum(estimate.values()),
                "devices": cfg.devices, "rates": sizing["rates"], "rates_source": rates_info["rates_source"],
                "rates_note": rates_info["rates_note"], "measured_here": rates_info["rates_source"] == "measured",
                "sizing": sizing, "eval_split": cfg.eval_split,
                "validation": val.why if val else "not known without the data"}
    if sizing["over_budget"]:
        log.warning("the plan (%.0f s) is over budget_minutes = %s even with every training stage at min_steps",
                    sizing["planned_seconds"], cfg.budget_minutes)
    log.info("training steps for %d training lists: %s (%s epochs; budget factor %s); validation: %s",
             sizing["training_lists"], sizing["steps"], sizing["epochs"], sizing["factor"], val.why)
    rank, _, _ = world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "recipe.json", {**asdict(cfg), "data_dir": str(directory)})
    stages = Stages(out, estimate, rank)
    runner = _Runner(cfg, out, train_ds, test_ds, stages, progress, val)
    runner.run_all(str(directory.resolve()))
    if rank != 0:
        return {}
    if rates_info["rates_source"] == "measured":  # a plan far off what the stages took: measure again next run
        from tandem.train.rates import check_plan

        drift = check_plan(cfg, {n: stages.seconds[n] for n in stages.ran}, estimate)
        if drift is not None:
            sizing["plan_drift"] = drift
    report = runner.report(time.perf_counter() - t_start, sizing)
    write_json(out / "report.json", report)
    with atomic_open(out / "report.md") as f:
        f.write(render_markdown(report))
    try:
        from tandem.plots import write_plots

        write_plots(out, report)
    except ImportError:  # matplotlib is optional
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
    return report


def index_and_search(retriever_dir: Path, d: Path, corpus, queries, corpus_file: str = "",
                     progress: bool = False, val_queries=None) -> None:
    """Index ``corpus`` with a trained retriever's passage tower under ``d/index`` and write its top-1000 for
    ``queries`` to ``d/run.trec`` (and for ``val_queries`` to ``d/val.trec``)."""
    from tandem.index.dense import build_index, load_index_and_encoder
    from tandem.models.retriever import Retriever

    r = Retriever.from_pretrained(retriever_dir)
    build_index(corpus, d / "index", r.passage_tower(), progress=progress, corpus_file=corpus_file)
    search_into(d, *load_index_and_encoder(d / "index"), queries, val_queries, progress)


def search_into(d: Path, index, encoder, queries, val_queries=None, progress: bool = False) -> None:
    """A dense index's top-1000 for the test ``queries`` (``d/run.trec``) and the validation ones (``d/val.trec``)."""
    from tandem.data import write_run
    from tandem.index.dense import dense_search

    write_run(d / "run.trec", dense_search(index, encoder, queries, 1000, progress=progress))
    if val_queries:
        write_run(d / "val.trec", dense_search(index, encoder, val_queries, 1000, progress=progress))


def val_file(run_file: str) -> str:
    """The validation twin of a stage's test run file: run.trec -> val.trec, hybrid.trec -> hybrid.val.trec."""
    return "val.trec" if run_file == "run.trec" else run_file.removesuffix(".trec") + ".val.trec"


# The report's systems that no training produced: the starting points trained systems must beat.
UNTRAINED = ("bm25", "zero-shot", "hybrid-zero-shot")


class _Runner:
    def __init__(self, cfg, out, train_ds, test_ds, stages, progress, val: Validation):
        self.cfg, self.out, self.train_ds, self.test_ds = cfg, out, train_ds, test_ds
        self.stages, self.progress, self.val = stages, progress, val
        self._scores: dict[tuple[str, str], dict[str, float]] = {}  # (run file, split) -> metrics, evaluated once
        self.model = None if cfg.model == "default" else cfg.model
        # name -> {"dir": stage dir holding run.trec / val.trec, "file": run file name, "start": system it is
        # measured against, "adopted": bool | None, "note": str, "trained": bool}
        self.systems: dict[str, dict[str, Any]] = {}
        self.decisions: list[str] = []
        self.depths: dict[str, int] = {}

    # ---- validation --------------------------------------------------------------------------
    @property
    def validating(self) -> bool:
        return bool(self.val.queries)

    def _system(self, name: str, stage: str, file: str = "run.trec", start: str | None = None,
                note: str = "", trained: bool | None = None) -> None:
        self.systems[name] = {"dir": stage, "file": file, "start": start, "adopted": None, "note": note,
                              "trained": name not in UNTRAINED if trained is None else trained}
        self._headline(name)

    def _adopt(self, name: str, what: str) -> bool:
        """Whether trained system ``name`` beats its starting point on validation (do no harm); logged and kept
        for the report. Without validation, or with adopt=always, it is used unchecked."""
        sys_ = self.systems[name]
        start = sys_["start"]
        if self.cfg.adopt == "always" or not self.validating:
            why = "adopt=always" if self.cfg.adopt == "always" else "no validation"
            sys_["adopted"] = True
            self.decisions.append(f"{what}: used without a check ({why})")
            log.info("%s", self.decisions[-1])
            return True
        ok, new, old, p = self._beats(name, start)
        sys_["adopted"] = ok
        verdict = "adopted" if ok else f"no gain on validation: kept {start}"
        self.decisions.append(f"{what}: validation nDCG@10 {new:.4f} vs {start} {old:.4f} (one-sided p = {p:.3g}): "
                              f"{verdict}")
        log.info("%s", self.decisions[-1])
        return ok

    def _beats(self, a: str, b: str) -> tuple[bool, float, float, float]:
        """Whether system ``a`` beats ``b`` on validation: mean nDCG@10 above ``b``'s + min_gain and a one-sided
        paired randomisation p below adopt_p. Returns (verdict, a's mean, b's mean, p)."""
        from tandem.eval.stats import one_sided_p, paired_test

        va, vb = self._evaluate(self.systems[a], "val"), self._evaluate(self.systems[b], "val")
        p = one_sided_p(paired_test(va["_per_query"], vb["_per_query"]))
        ok = va["nDCG@10"] > vb["nDCG@10"] + self.cfg.min_gain and p < self.cfg.adopt_p
        return ok, va["nDCG@10"], vb["nDCG@10"], p

    # ---- stages ------------------------------------------------------------------------------
    def run_all(self, data_key: str) -> None:
        self.data_dir = data_key
        from tandem.data import read_run, write_run
        from tandem.index.bm25 import BM25, BM25Settings, stemmer_name
        from tandem.index.dense import build_index, load_index_and_encoder
        from tandem.index.fusion import fuse_runs
        from tandem.models.encoder import Encoder

        cfg, st, out = self.cfg, self.stages, self.out
        tq, vq = self.test_ds.split_queries(), self.val.queries
        vkey = {"validation": self.val.key}

        def bm25(d: Path) -> None:
            index = BM25(self.train_ds.corpus, BM25Settings(stemmer=cfg.bm25_stemmer), progress=self.progress)
            write_run(d / "run.trec", index.search(tq, 1000))
            if vq:
                write_run(d / "val.trec", index.search(vq, 1000))

        stem = stemmer_name(cfg.bm25_stemmer)
        st.run("bm25", {"data": data_key, **vkey, **({"stemmer": stem} if stem else {})}, bm25)
        self._system("bm25", "bm25")
        from tandem.data.dataset import corpus_file

        # the indexes record their corpus file, so `tandem serve INDEX --reranker ...` finds the texts
        self.corpus_file = str(corpus_file(Path(data_key)))
        st.run("zs-index", {"data": data_key, "model": cfg.model, "max_length": cfg.max_length}, lambda d: build_index(
            self.train_ds.corpus, d / "index", Encoder.from_pretrained(self.model, max_length=cfg.max_length),
            progress=self.progress, corpus_file=self.corpus_file), after=())
        st.run("zero-shot", vkey, lambda d: search_into(d, *load_index_and_encoder(out / "zs-index" / "index"), tq, vq,
                                                          self.progress), after=("zs-index",))
        self._system("zero-shot", "zero-shot")

        def fuse(d: Path, first: list[str]) -> None:
            for name in ("run.trec", "val.trec") if vq else ("run.trec",):
                write_run(d / name, fuse_runs([read_run(out / f / name) for f in first], top=1000))

        st.run("hybrid-zero-shot", {}, lambda d: fuse(d, ["bm25", "zero-shot"]), after=("bm25", "zero-shot"))
        self._system("hybrid-zero-shot", "hybrid-zero-shot")

        def lists(d: Path, reranker: str | None = None) -> None:
            from tandem.mine import mine

            ms = cfg.mine_settings(len(self.train_ds.qrels))
            if reranker is not None:  # denoising: the lists stage mined these candidates; resume from them
                work = d / "lists.mine"
                work.mkdir(parents=True, exist_ok=True)
                for name in ("candidates.jsonl", "manifest.json"):
                    shutil.copy2(out / "lists" / "lists.mine" / name, work / name)
            mine(self.data_dir, d / "lists.jsonl", index=out / "zs-index" / "index", reranker=reranker, settings=ms,
                 progress=self.progress, ds=self.train_ds)

        extra = {"mine": cfg.mine} if cfg.mine else {}  # (without it, the keys of runs made before `mine:`)
        st.run("lists", {"top_n": cfg.top_n, **extra}, lists, after=("zs-index",))
        # what the re-ranker warm-up and joint training start from, and the system that stands for it
        start, start_after, start_system = self.model, (), "zero-shot"
        if cfg.retriever_warmup_steps:
            self._train("retriever-warmup", "retriever", cfg.retriever_warmup_steps, self.model, None,
                        after=("lists",))
            warm = "retriever-only" if cfg.retriever_only == "warmup" else "retriever-warmup"  # its row
            self._index_stage("retriever-warmup", warm, tq, start="zero-shot")
            if self._adopt(warm, "retriever warm-up"):
                start, start_after = str(out / "retriever-warmup" / "retriever"), ("retriever-warmup",)
                start_system = warm
        fit = cfg.fits_lexical_weight
        self._train("warmup", "reranker", cfg.warmup_steps, None, cfg.reranker or start,
                    after=("lists", *(() if cfg.reranker else start_after)), first_stage=start_system,
                    post=self._fit_lexical if fit else None,
                    post_key={"lexical_fit_queries": cfg.lexical_fit_queries} if fit else None)
        if fit:
            self._lexical_decision("warmup")
        lists_stage = "lists"
        if cfg.denoise:
            lists_stage = "denoise"
            st.run("denoise", {"top_n": cfg.top_n, "denoise_top": cfg.denoise_top, "low": cfg.low, "high": cfg.high,
                               "low_from_positives": cfg.low_from_positives,
                               "calibration_max_queries": cfg.calibration_max_queries,
                               "calibration_pool": cfg.mine_settings(len(self.train_ds.qrels)).calibration_pool,
                               "queries": denoised_queries(cfg, len(self.train_ds.qrels)), **extra},
                   lambda d: lists(d, str(out / "warmup" / "reranker")), after=("zs-index", "warmup"))
        self._train("joint", "joint", cfg.joint_steps, start, str(out / "warmup" / "reranker"),
                    after=(lists_stage, "warmup", *start_after), lists=lists_stage, first_stage=start_system)
        self._index_stage("joint", "joint-retriever", tq, start=start_system)
        first = "joint-retriever" if self._adopt("joint-retriever", "joint retriever") else start_system
        self.retriever = str(out / "joint" / "retriever") if first == "joint-retriever" else start
        self.first = first
        first_stage = self.systems[first]["dir"]
        if cfg.hybrid:
            st.run("hybrid", {"first": first_stage}, lambda d: fuse(d, ["bm25", first_stage]),
                   after=("bm25", first_stage))
            # the hybrid of BM25 and an unadopted retriever is the training-free hybrid again
            self._system("hybrid", "hybrid", start="hybrid-zero-shot", note=f"BM25 + {first}",
                         trained=first != "zero-shot")
        both = cfg.hybrid and cfg.hybrid_rerank  # the hybrid top-k is re-ranked too
        firsts = {"run": first_stage, **({"hybrid": "hybrid"} if both else {})}  # output name -> first stage
        reranker_dir = out / "joint" / "reranker"
        depths = rerank_depths(cfg)

        def rerank_runs(d: Path, split: str, k_of: dict[str, list[int]], queries, file_of) -> None:
            """Re-rank each first stage's ``split`` run (run / val) at each depth into ``d / file_of(name, k)``."""
            from tandem.models.reranker import Reranker
            from tandem.rerank import rerank

            ce = Reranker.from_pretrained(reranker_dir)
            cache: dict = {}  # (qid, pid) -> score: the first stages overlap, and a shallower depth reuses a deeper
            for name, stage in firsts.items():
                run = read_run(out / stage / f"{split}.trec")
                for k in sorted(k_of[name], reverse=True):
                    write_run(d / file_of(name, k), rerank(run, queries, self.test_ds.corpus, ce, k,
                                                           progress=self.progress, cache=cache))

        if self.validating and len(depths) > 1:
            st.run("val-rerank", {"depths": depths, "firsts": firsts, **vkey},
                   lambda d: rerank_runs(d, "val", {n: depths for n in firsts}, vq, lambda n, k: f"{n}@{k}.trec"),
                   after=("joint", *dict.fromkeys(firsts.values())))
            for name in firsts:  # the depth with the best validation nDCG@10 (the shallower on a tie)
                scores = {k: self._evaluate({"dir": "val-rerank", "file": f"{name}@{k}.trec"}, "val", as_is=True)
                          ["nDCG@10"] for k in depths}
                self.depths[name] = max(depths, key=lambda k: (scores[k], -k))
                self.decisions.append(f"re-ranking depth for {'the hybrid first stage' if name == 'hybrid' else first}"
                                      f": {self.depths[name]} (validation nDCG@10 "
                                      + ", ".join(f"@{k} {v:.4f}" for k, v in scores.items()) + ")")
                log.info("%s", self.decisions[-1])
        else:
            self.depths = {n: depths[-1] for n in firsts}

        def rerank_stage(d: Path) -> None:
            chosen = {n: [self.depths[n]] for n in firsts}
            rerank_runs(d, "run", chosen, self.test_ds.queries, lambda n, k: f"{n}.trec")
            if self.validating and len(depths) == 1:
                rerank_runs(d, "val", chosen, vq, lambda n, k: val_file(f"{n}.trec"))
            elif self.validating:  # the chosen depth's validation run, beside the test run
                for n in firsts:
                    shutil.copy2(out / "val-rerank" / f"{n}@{self.depths[n]}.trec", d / val_file(f"{n}.trec"))

        st.run("rerank", {"k": self.depths, "firsts": firsts, **vkey}, rerank_stage,
               after=("joint", *dict.fromkeys(firsts.values())) + (("val-rerank",) if "val-rerank" in st.keys
                                                                    else ()))
        self._system("joint-retriever+reranker", "rerank", "run.trec", start=first,
                     note=f"joint re-ranker over the top-{self.depths['run']} of {first}")
        self.reranker_adopted = self._adopt("joint-retriever+reranker", "joint re-ranker")
        if both:
            self._system("hybrid+reranker", "rerank", "hybrid.trec", start="hybrid",
                         note=f"joint re-ranker over the top-{self.depths['hybrid']} of hybrid")
            self._adopt("hybrid+reranker", "joint re-ranker over the hybrid first stage")
        if cfg.retriever_only == "equal-steps":  # the joint stage's settings, the retriever's own loss alone
            self._train("retriever-alone", "retriever", cfg.joint_steps, start, None,
                        after=(lists_stage, *start_after), lists=lists_stage, shape_of="joint")
            self._index_stage("retriever-alone", "retriever-only", tq, start=start_system)
        if cfg.retriever_only == "steps":
            self._train("retriever-only", "retriever", cfg.retriever_only_steps, self.model, None,
                        after=(lists_stage, "warmup") if cfg.denoise else ("lists",), lists=lists_stage)
            self._index_stage("retriever-only", "retriever-only", tq, start="zero-shot")

    def _evaluate(self, system: dict[str, Any], split: str = "test", as_is: bool = False) -> dict[str, float] | None:
        """Metrics of a system's test run (``split="test"``) or validation run (``"val"``); None where there is
        none. Each file is read and scored once per invocation."""
        name = system["file"]
        if split == "val" and not as_is:  # the file named is the test run: its validation twin
            name = val_file(name)
        path = self.out / system["dir"] / name
        if split == "val" and not self.validating or not path.exists():
            return None
        key = (str(path), split)
        if key not in self._scores:
            from tandem.data import read_run
            from tandem.eval.metrics import evaluate_per_query

            qrels = self.val.qrels if split == "val" else self.test_ds.qrels
            per_query = evaluate_per_query(read_run(path), qrels, REPORT_MEASURES)
            n = len(per_query) or 1
            self._scores[key] = {**{m: sum(q[m] for q in per_query.values()) / n for m in REPORT_MEASURES},
                                 "_per_query": {q: v["nDCG@10"] for q, v in per_query.items()}}
        return dict(self._scores[key])  # a copy: the report pops the per-query scores

    def _headline(self, system: str) -> None:
        """Log a finished system's test (and validation) metrics at once, so a run cut short still says where
        it stands."""
        if self.stages.rank != 0:
            return
        m = self._evaluate(self.systems[system])
        if m is None:
            return
        v = self._evaluate(self.systems[system], "val")
        log.info("%-24s %s on %s%s", system, "  ".join(f"{k} {m[k]:.4f}" for k in REPORT_MEASURES),
                 self.cfg.eval_split, f"; validation nDCG@10 {v['nDCG@10']:.4f}" if v else "")

    def _index_stage(self, trained: str, system: str, queries, start: str | None = None) -> None:
        """Stage ``<trained>-index``: the corpus indexed with the retriever that stage ``trained`` wrote, and its
        test (and validation) run, reported as ``system``."""
        self.stages.run(f"{trained}-index", {"validation": self.val.key},
                        lambda d: index_and_search(self.out / trained / "retriever", d, self.train_ds.corpus, queries,
                                                   self.corpus_file, self.progress, self.val.queries),
                        after=(trained,))
        self._system(system, f"{trained}-index", start=start)

    def _train(self, name: str, mode: str, steps: int, retriever, reranker, after, lists: str = "lists",
               shape_of: str = "", first_stage: str = "", post: Callable[[Path], dict] | None = None,
               post_key: dict | None = None) -> None:
        """A training stage; ``shape_of`` takes another stage's own settings (``joint``: its lists, batch, loss
        options) in place of this one's. With ``val_every``, its models are validated while it trains and each
        keeps its best state; a re-ranker is validated over system ``first_stage``'s validation run. ``post(dir)``
        runs after training (rank 0); what it returns joins the stage's result.json, ``post_key`` its key."""
        from tandem.train import train

        overrides = self.cfg.train_overrides(mode, steps, shape_of or name)
        validator, settings = None, {}
        if self.cfg.val_every and self.validating:
            from tandem.data import read_run
            from tandem.train.validation import StageValidator

            # eval_every is val_every (train_overrides); a state replaces the start only as adoption would take it
            overrides |= {"keep_best": True, "keep_best_p": self.cfg.adopt_p}
            first = self.systems[first_stage] if first_stage else None
            settings = {"validation": self.val.key, "first_stage": first_stage,
                        "depth": max(rerank_depths(self.cfg))}

            def validator():
                run = read_run(self.out / first["dir"] / val_file(first["file"])) if first else None
                return StageValidator(self.val.queries, self.val.qrels, self.train_ds.corpus, run, settings["depth"])

        def fn(d: Path) -> None:
            result = train(self.data_dir, d, lists=self.out / lists / "lists.jsonl",
                           retriever=retriever, reranker=reranker, overrides=overrides, resume=True,
                           progress=self.progress, validator=validator() if validator else None)
            if self.stages.rank == 0:
                after_training = post(d) if post else {}  # (before result.json: a kill here reruns it)
                write_json(d / "result.json", {"steps": result.steps, "seconds": result.seconds,
                                               "sequences_per_s": result.sequences_per_s, "heldout": result.heldout,
                                               "final_losses": result.final_losses,
                                               "validation": result.validation, **after_training})

        # subtle: a killed training stage has no done.json but keeps its checkpoints; train(resume=True) continues
        self.stages.run(name, {"mode": mode, "overrides": overrides, "retriever": retriever, "reranker": reranker,
                               "lists": lists, **settings, **(post_key or {})},
                        fn, after=after, every_rank=True)
        self._stage_validation(name)

    def _lexical_decision(self, name: str) -> None:
        """Stage ``name``'s lexical-weight fit, for the log and the report's decisions."""
        path = self.out / name / "result.json"
        fit = read_json(path).get("lexical_fit") if path.exists() else None
        if fit:
            self.decisions.append(
                f"{name} re-ranker: lexical weight {fit['w_before']:.3f} -> {fit['w_after']:g}, chosen by re-ranking "
                f"the first-stage top-{self.cfg.top_n} of {fit['queries']} training queries (nDCG@10 "
                f"{fit['ndcg_before']:.4f} -> {fit['ndcg_after']:.4f})")
            log.info("%s", self.decisions[-1])

    def _fit_lexical(self, d: Path) -> dict:
        """The warmed-up gated re-ranker's lexical weight chosen on training queries' first-stage top-k (the
        candidates the lists were mined from), saved in place (:mod:`tandem.train.lexical`); ``{"lexical_fit":
        what was measured}``, or ``{}`` for a re-ranker without a bounded lexical weight."""
        from tandem.io import atomic_dir, iter_jsonl
        from tandem.models.reranker import Reranker
        from tandem.train.lexical import fit_lexical_weight
        from tandem.train.lists import first_by_hash, heldout_qids

        reranker = Reranker.from_pretrained(d / "reranker")
        if getattr(reranker, "lexical", None) != "bounded":
            return {}  # a plain cross-encoder (or a gated one saved with the raw feature) has no bounded weight
        candidates = {e["qid"]: [c["pid"] for c in sorted(e["candidates"], key=lambda c: c["rank"])]
                      for _, e in iter_jsonl(self.out / "lists" / "lists.mine" / "candidates.jsonl")}
        qrels = self.train_ds.qrels
        held = heldout_qids([q for q in qrels if q in self.train_ds.queries], self.cfg.heldout_fraction)
        pool = [q for q in candidates if q in qrels and q in self.train_ds.queries and q not in held
                and q not in self.val.queries]
        chosen = first_by_hash(pool, self.cfg.lexical_fit_queries, salt="tandem-lexical-fit")
        fit = fit_lexical_weight(reranker, {q: self.train_ds.queries[q] for q in chosen}, candidates, qrels,
                                 self.train_ds.corpus, progress=self.progress)
        with atomic_dir(d / "reranker") as tmp:
            reranker.save(tmp)
        return {"lexical_fit": {**fit, "qids": chosen}}

    def _stage_validation(self, name: str) -> None:
        """The decisions of ``keep_best`` inside stage ``name`` (which step of each model was kept), for the log
        and the report."""
        path = self.out / name / "result.json"
        if not path.exists():
            return
        result = read_json(path)
        for model, v in (result.get("validation") or {}).items():
            hist = ", ".join(f"{h['step']}: {h['nDCG@10']:.4f}" for h in v.get("history", []))
            last = v["history"][-1]["step"] if v.get("history") else result.get("steps")
            kept = (f"kept step {v['best_step']} of {last}" if v.get("restored") else f"kept its last step {last}")
            self.decisions.append(f"{name} {model}: validated while training (step: nDCG@10 {hist}): {kept}")
            log.info("%s", self.decisions[-1])

    # ---- report ------------------------------------------------------------------------------
    def _chains(self) -> dict[str, list[str]]:
        """The stages each system needs, for its wall time."""
        cfg = self.cfg
        lists = ["lists", "warmup", "denoise"] if cfg.denoise else ["lists"]
        warm = ["retriever-warmup", "retriever-warmup-index"]
        joint = ["zs-index", *lists, *warm, "warmup", "joint", "joint-index"]
        rr = ["val-rerank", "rerank"]
        return {"bm25": ["bm25"], "zero-shot": ["zs-index", "zero-shot"],
                "hybrid-zero-shot": ["bm25", "zs-index", "zero-shot", "hybrid-zero-shot"],
                "joint-retriever": joint, "joint-retriever+reranker": [*joint, *rr],
                "hybrid": ["bm25", *joint, "hybrid"], "hybrid+reranker": ["bm25", *joint, "hybrid", *rr],
                "retriever-warmup": ["zs-index", "lists", *warm],
                "retriever-only": {"steps": ["zs-index", *lists, "retriever-only", "retriever-only-index"],
                                   "equal-steps": ["zs-index", *lists, *warm, "retriever-alone",
                                                   "retriever-alone-index"],
                                   "warmup": ["zs-index", "lists", *warm]}.get(cfg.retriever_only, [])}

    def report(self, total: float, sizing: dict[str, Any] | None = None) -> dict[str, Any]:
        from tandem.eval.stats import describe_test, paired_test

        s = self.stages.seconds
        chains = self._chains()
        systems: dict[str, dict[str, Any]] = {}
        per_query: dict[str, tuple[dict, dict]] = {}
        for name, sys_ in self.systems.items():
            test, val = self._evaluate(sys_), self._evaluate(sys_, "val")
            per_query[name] = (test.pop("_per_query"), val.pop("_per_query") if val else {})
            row = {**test, "seconds": sum(s.get(p, 0.0) for p in dict.fromkeys(chains.get(name, []))),
                   "run": str(self.out / sys_["dir"] / sys_["file"]), "val": val, "trained": sys_["trained"]}
            if sys_["start"]:
                row["start"] = sys_["start"]
                row["adopted"] = sys_["adopted"]
                row["paired_vs_start"] = {"test": paired_test(per_query[name][0], per_query[sys_["start"]][0])}
                if val:
                    row["paired_vs_start"]["val"] = paired_test(per_query[name][1], per_query[sys_["start"]][1])
            if sys_["note"]:
                row["note"] = sys_["note"]
            systems[name] = row
        # the system the recipe stands behind: the best on validation (never on test); training-free on a tie
        if self.validating:
            chosen = max(systems, key=lambda n: (systems[n]["val"]["nDCG@10"], -list(systems).index(n)))
            why = f"best validation nDCG@10 ({systems[chosen]['val']['nDCG@10']:.4f}, {self.val.why})"
            if systems[chosen]["trained"]:  # a trained system must beat the best training-free one, as any model
                free = max(UNTRAINED, key=lambda n: (systems[n]["val"]["nDCG@10"], -UNTRAINED.index(n)))
                ok, new, old, p = self._beats(chosen, free)
                if not ok:
                    why = (f"{chosen} led on validation ({new:.4f} vs {old:.4f}) within the noise (one-sided p = "
                           f"{p:.3g}, adopt_p {self.cfg.adopt_p}): the best training-free system")
                    chosen = free
        else:
            chosen = "joint-retriever+reranker"
            why = f"the last trained system: {self.val.why}"
        trained = [n for n in systems if systems[n]["trained"]]
        best_trained = max(trained, key=lambda n: systems[n]["val"]["nDCG@10"]) if self.validating else chosen
        base = "hybrid-zero-shot"
        paid = {"best_trained": best_trained, "baseline": base,
                "test": paired_test(per_query[best_trained][0], per_query[base][0])}
        if self.validating:
            paid["val"] = paired_test(per_query[best_trained][1], per_query[base][1])
        paid["earned"] = bool(paid["test"]["diff"] > 0 and paid["test"]["p"] < 0.05)
        paid["summary"] = ("training earned its minutes: " if paid["earned"] else
                           "training did not earn its minutes (not above the training-free baseline at p < 0.05): ") \
            + describe_test(paid["test"], best_trained, base) + f" on {self.cfg.eval_split}"
        selected = {"system": chosen, "reason": why, "trained": systems[chosen]["trained"],
                    "nDCG@10": systems[chosen]["nDCG@10"],
                    "val_nDCG@10": systems[chosen]["val"]["nDCG@10"] if self.validating else None}
        if self.validating and not systems[chosen]["trained"]:
            selected["note"] = f"No trained system beats {chosen} on validation: the recipe serves {chosen}"
        systems.update(peer_rows(self.cfg.peers))
        curves = {}
        for stage in ("retriever-warmup", "warmup", "joint", "retriever-only", "retriever-alone"):
            path = self.out / stage / "metrics.jsonl"
            if path.exists():
                curves[stage] = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        hybrid_lists = _hybrid_lists(self.out / "denoise" / "lists.report.json")
        # total_seconds: what the whole pipeline cost (a cached stage counts its original run);
        # wall_seconds: this invocation alone
        return {"data": str(self.cfg.data), "split": self.cfg.eval_split, "queries": len(self.test_ds.qrels),
                "config": asdict(self.cfg), "systems": systems, "headline": chosen, "selected": selected,
                "validation": {"source": self.val.source, "queries": len(self.val.queries), "why": self.val.why},
                "decisions": self.decisions, "training_paid": paid, "sizing": sizing or {},
                "stage_seconds": s, "stage_plan_seconds": {k: round(v, 1) for k, v in self.stages.plan.items()},
                "total_seconds": max(total, sum(s.values())), "wall_seconds": total,
                "stage_peak_rss_bytes": self.stages.peak_rss, "peak_rss_bytes": _process_peak_rss(),
                "models": {"retriever": self.retriever or str(self.cfg.model),
                           "reranker": str(self.out / "joint" / "reranker") if self.reranker_adopted else None,
                           "first_stage": self.first},
                "curves": curves, **({"hybrid_lists": hybrid_lists} if hybrid_lists else {})}


def _hybrid_lists(path: Path) -> dict[str, Any] | None:
    """What the denoise stage made of the lists (from its mining report): how many training lists are hybrid (have
    a denoised pool), how many found it below their candidates (``denoise_depth``), the pseudo-positives."""
    if not path.exists():
        return None
    d = json.loads(path.read_text()).get("denoising") or {}
    h, g = d.get("training_lists_with_denoised_pool"), d.get("deeper") or {}
    if not h:  # (a mining report from before these counts)
        return None
    return {"training_lists": h["lists"], "with_denoised_pool": h["with"], "share": round(h["share"], 4),
            "deeper_queries": g.get("queries", 0), "deeper_found": g.get("found", 0),
            "pseudo_positives": d.get("pseudo_positives", 0)}


def _process_peak_rss() -> int:
    """The kernel's high-water mark of this process's resident memory (bytes): what ``time -v`` reports."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def peer_rows(path: str) -> dict[str, dict]:
    """The systems of a peers benchmark result (``benchmarks/peers_scifact.py``) as report rows named
    ``peer:NAME``, with their training seconds; none when no file is named."""
    if not path:
        return {}
    if not Path(path).exists():
        raise ConfigError(f"peers: {path} does not exist (write it with benchmarks/peers_scifact.py --out DIR)")
    from tandem.errors import DataFormatError

    data = read_json(path)
    systems = data.get("systems") if isinstance(data, dict) else None
    if not isinstance(systems, dict) or not all(isinstance(v, dict) for v in systems.values()):
        raise DataFormatError(path, 'expected {"systems": {NAME: {"nDCG@10": ..., ...}}} as '
                                    "benchmarks/peers_scifact.py writes it")
    rows = {}
    for name, vals in systems.items():
        bad = [m for m in (*REPORT_MEASURES, "train_seconds") if m in vals and not isinstance(vals[m], (int, float))]
        if bad:
            raise DataFormatError(path, f"systems.{name}: {bad[0]} must be a number, found {vals[bad[0]]!r}")
        rows[f"peer:{name}"] = {**{m: vals[m] for m in REPORT_MEASURES if m in vals},
                                "seconds": vals.get("train_seconds", 0.0), "peer": True}
    return rows


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _retriever_only_sentence(cfg: dict[str, Any]) -> str:
    """What the report's `retriever-only` row is, from the run's recorded config."""
    known = {f.name for f in fields(RecipeConfig)}
    source = RecipeConfig(**{k: v for k, v in cfg.items() if k in known}).retriever_only
    joint, warm = cfg.get("joint_steps"), cfg.get("retriever_warmup_steps")
    return {
        "steps": " `retriever-only`: the retriever trained alone on the joint lists "
                 f"({cfg.get('retriever_only_steps')} "
                 "steps).",
        "equal-steps": f" `retriever-only`: the retriever warm-up ({warm} steps) continued alone for the joint "
                       f"stage's {joint} steps on the joint's lists and settings (its own listwise CE in place of CE + "
                       "KL): the joint retriever's budget, step for step.",
        "warmup": f" `retriever-only`: the retriever warm-up ({warm} steps, trained alone), from which joint training "
                  f"starts; the joint retriever has trained {joint} steps more, so this is not an equal-budget "
                  "baseline (`retriever_only_equal_steps=true` adds one).",
    }.get(source, "")


def _hybrid_sentence(h: dict[str, Any] | None) -> str:
    if not h:
        return ""
    deeper = (f" ({h['deeper_found']} of the {h['deeper_queries']} with none among their candidates found one deeper)"
              if h["deeper_queries"] else "")
    return (f" Training lists with a denoised pool: {h['with_denoised_pool']} of {h['training_lists']} "
            f"({100 * h['share']:.1f}%){deeper}; {h['pseudo_positives']} pseudo-positives.")


def render_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    val = report.get("validation", {})
    has_val = any(v.get("val") for v in report["systems"].values())
    lines = [f"# tandem report: {Path(str(report['data'])).name} ({report['split']}, {report['queries']} queries)", ""]
    sel = report.get("selected")
    if sel:
        lines += [f"**Selected: `{sel['system']}`** ({sel['reason']}): {report['split']} nDCG@10 {sel['nDCG@10']:.4f}."
                  + (f" {sel['note']}." if sel.get("note") else ""), ""]
    lines += ["| system | " + ("val nDCG@10 | " if has_val else "") + " | ".join(REPORT_MEASURES)
              + " | seconds | adopted | vs start (test, paired) |",
              "|---" * (len(REPORT_MEASURES) + 4 + has_val) + "|"]
    for name, vals in report["systems"].items():
        adopted = {True: "yes", False: "**no**", None: "-"}[vals.get("adopted")]
        pv = vals.get("paired_vs_start", {}).get("test")
        vs = f"{pv['diff']:+.4f} vs {vals['start']} (p = {pv['p']:.3g})" if pv else "-"
        lines.append(f"| {name} | " + (f"{_cell((vals.get('val') or {}).get('nDCG@10'))} | " if has_val else "")
                     + " | ".join(_cell(vals.get(m)) for m in REPORT_MEASURES)
                     + f" | {vals['seconds']:.0f} | {adopted} | {vs} |")
    lines += ["", "`seconds`: wall time of the stages that system needs (cached stages count their first run)"
              + ("; `peer:` rows: sentence-transformers trained by benchmarks/peers_scifact.py on the same machine "
                 "and data, seconds of training." if any(v.get("peer") for v in report["systems"].values()) else ".")
              + " `adopted`: whether the trained model beat its starting point on validation and so was used "
                "downstream (do no harm); `vs start`: its difference from that start on test, with a paired "
                "randomisation test over queries.", ""]
    if val:
        lines += [f"Validation: {val['why']}.", ""]
    notes = [f"`{n}`: {v['note']}" for n, v in report["systems"].items() if v.get("note")]
    if notes:
        lines += ["; ".join(notes) + ".", ""]
    if report.get("decisions"):
        lines += ["## Decisions on validation", ""] + [f"- {d}" for d in report["decisions"]] + [""]
    if report.get("training_paid"):
        lines += [f"Against the training-free baseline: {report['training_paid']['summary']}.", ""]
    sizing = report.get("sizing") or {}
    if sizing:
        lines += [f"Training sizes for {sizing['training_lists']} training lists: "
                  + ", ".join(f"{k} {v} ({sizing['epochs'][k]} epochs)" for k, v in sizing["steps"].items())
                  + (f"; shrunk by {sizing['factor']} to fit budget_minutes = {cfg.get('budget_minutes')}"
                     if sizing.get("factor", 1.0) < 1.0 else "")
                  + (f"; evaluation shrunk to fit: {', '.join(sizing['evaluation_shrunk'])}"
                     if sizing.get("evaluation_shrunk") else "")
                  + (f" (every stage at min_steps = {cfg.get('min_steps')}, still over budget: the rest is "
                     "encoding and re-ranking)" if sizing.get("over_budget") else "")
                  + f"; {sizing['denoised_queries']} training queries denoised"
                  + (f"; time plan from {sizing['rates_note']}" if sizing.get("rates_note") else "")
                  + (f"; the stages that ran took {sizing['plan_drift']['ratio']}x their plan"
                     + (" (the cached rates are dropped: the next run measures them again)"
                        if sizing["plan_drift"]["reprobe"] else "") if sizing.get("plan_drift") else "") + ".", ""]
    lines += [
              "## Settings", "",
              f"Passages {cfg['max_length']} tokens, queries {cfg['query_max_length']}, re-ranker pairs "
              f"{cfg['reranker_max_length']}; lists of {cfg['list_size']} from the zero-shot top-{cfg['top_n']}, "
              f"{cfg['batch_size']} lists per step; re-ranker warm-up {cfg['warmup_steps']} steps "
              f"({cfg['reranker_arch']} architecture), joint training {cfg['joint_steps']} steps; the joint "
              f"re-ranker re-scores the adopted retriever's top-k"
              + (" and the hybrid first stage's (BM25 + that retriever, reciprocal rank fusion, k = 60) top-k"
                 if cfg.get("hybrid") and cfg.get("hybrid_rerank") else "")
              + f", k chosen on validation among {cfg.get('rerank_depths') or [cfg['rerank_k']]}."
              + (" `hybrid`: BM25 and the adopted retriever fused by reciprocal rank fusion (k = 60);"
                 " `hybrid-zero-shot`: BM25 and the zero-shot retriever, the training-free baseline."
                 if cfg.get("hybrid") else "")
              + (" Hybrid lists: the warmed-up re-ranker scored each training query's first "
                 f"{cfg['denoise_top'] or cfg['top_n']} "
                 + (f"candidates; below the {100 * cfg['low_from_positives']:.0f}% quantile of the held-out "
                    "positives' probabilities (the value is in the mining report)" if cfg.get("low_from_positives")
                    else f"candidates; below p = {cfg['low']}")
                 + f" they form the denoised pool, above {cfg['high']} they become "
                 "pseudo-positives"
                 + (f"; a query with no candidate below had its next ones scored, down to rank "
                    f"{(cfg.get('mine') or {})['denoise_depth']}, until one was"
                    if (cfg.get("mine") or {}).get("denoise_depth") else "")
                 + " (mining report: `denoise/lists.report.md`)." if cfg.get("denoise") else "")
              + _retriever_only_sentence(cfg)
              + _hybrid_sentence(report.get("hybrid_lists")), "",
              "## Stages", "", "| stage | seconds | planned |", "|---|---|---|"]
    planned = report.get("stage_plan_seconds") or {}
    lines += [f"| {k} | {v:.0f} | {planned[k]:.0f} |" if k in planned else f"| {k} | {v:.0f} | |"
              for k, v in report["stage_seconds"].items()]
    lines += ["", f"Total wall time: {report['total_seconds']:.0f} s.", "",
              f"Models used (adopted): retriever `{report['models']['retriever']}`, re-ranker "
              + (f"`{report['models']['reranker']}`." if report['models']['reranker'] else
                 "none (the joint re-ranker did not beat its first stage on validation)."), "",
              "Plots: `systems.png`, `losses.png`, `heldout.png`.", ""]
    return "\n".join(lines)
