"""The recipe's settings (:class:`RecipeConfig`), its shipped configs and the sizes derived from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tandem.errors import ConfigError, UsageError
from tandem.settings import setting as _f

REPORT_MEASURES = ("nDCG@10", "RR@10", "R@100")
CONFIG_DIR = Path(__file__).parent.parent / "configs"

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
RETRIEVER_ONLY = ("warmup", "equal-steps", "steps", "none")


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
    retriever_only: str = _f("warmup", "the report's `retriever-only` row, the joint retriever's baseline: warmup "
                                       "(the retriever warm-up itself, trained alone, from which joint training "
                                       "starts; with retriever_warmup_steps), equal-steps (the warm-up continued "
                                       "alone for joint_steps on the joint's lists in the joint stage's shape, its "
                                       "own listwise CE in place of CE + KL: the joint retriever's budget, step for "
                                       "step; with retriever_warmup_steps), steps (trained alone from the start "
                                       "model for retriever_only_steps on the joint's lists) or none")
    retriever_only_steps: int = _f(0, "retriever_only=steps: its training steps (set alone, as configs written "
                                      "before retriever_only did, it means retriever_only=steps)")
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
    heldout_draw: str = _f("seed", "which training queries are held out (validation without a dev split, the "
                                   "curves, the denoiser's calibration) and which validation queries a capped dev "
                                   "split keeps: seed (a draw per seed: seeds then differ by the draw as by "
                                   "training; SciFact's one fixed draw sat at the 1.5th percentile of zero-shot - "
                                   "BM25, BENCHMARKS.md) or fixed (the one draw of tandem train and mine, the "
                                   "recipe's before session 19)")
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
        ``mine`` (any :class:`~tandem.mining.MineSettings` field; an unknown one is a ConfigError)."""
        from tandem.mining import MineSettings
        from tandem.settings import load_settings

        own = {"top_n": self.top_n, "low": self.low, "high": self.high, "denoise_top": self.denoise_top,
               "split": self.train_split, "low_from_positives": self.low_from_positives,
               "calibration_fraction": self.heldout_fraction if 0 < self.heldout_fraction < 1 else 0.1,
               "heldout_salt": self.heldout_salt,
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
                "heldout_fraction": self.heldout_fraction, "heldout_salt": self.heldout_salt,
                "eval_every": self.val_every or self.eval_every,
                "reranker_arch": self.reranker_arch, **(self.train or {}), **own}

    @property
    def heldout_salt(self) -> str:
        """The salt of the held-out and capped-validation draws (``heldout_draw``), one for every stage."""
        return draw_salt(self.heldout_draw, self.seed)

    @property
    def retriever_only_row(self) -> str:
        """Where the `retriever-only` row comes from (``retriever_only``), or ``""`` where the recipe has none: the
        warm-up and equal-steps rows need a retriever warm-up."""
        if self.retriever_only not in RETRIEVER_ONLY:
            raise ConfigError(f"retriever_only={self.retriever_only!r}: expected one of {', '.join(RETRIEVER_ONLY)}")
        if self.retriever_only == "steps" and self.retriever_only_steps <= 0:
            raise ConfigError("retriever_only=steps needs retriever_only_steps > 0")
        if self.retriever_only in ("warmup", "equal-steps") and not self.retriever_warmup_steps:
            return ""
        return "" if self.retriever_only == "none" else self.retriever_only

    @staticmethod
    def upgrade(values: dict[str, Any]) -> dict[str, Any]:
        """Settings as configs wrote them before ``retriever_only`` was one setting, in its terms (the steps row
        first, then equal-steps, as those configs ranked them): ``retriever_only_steps: N`` alone means
        ``retriever_only: steps``, ``retriever_only_equal_steps: true`` ``equal-steps``, ``index_retriever_warmup:
        false`` ``none``."""
        from tandem.settings import coerce

        values = dict(values)
        equal = coerce("retriever_only_equal_steps", values.pop("retriever_only_equal_steps", False), bool)
        index_warmup = coerce("index_retriever_warmup", values.pop("index_retriever_warmup", True), bool)
        if "retriever_only" not in values:
            if coerce("retriever_only_steps", values.get("retriever_only_steps", 0), int) > 0:
                values["retriever_only"] = "steps"
            elif equal:
                values["retriever_only"] = "equal-steps"
            elif not index_warmup:
                values["retriever_only"] = "none"
        return values

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


def draw_salt(heldout_draw: str, seed: int) -> str:
    """The held-out salt of ``heldout_draw`` (seed: one per seed; fixed: the one of tandem train and mine)."""
    from tandem.train.lists import heldout_salt

    if heldout_draw not in ("seed", "fixed"):
        raise ConfigError(f"heldout_draw={heldout_draw!r}: expected seed or fixed")
    return heldout_salt(seed if heldout_draw == "seed" else None)


def saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's ``recipe.json`` as settings :func:`load_recipe` takes again: without what the run added
    (``data_dir``) and with the draw it used (a run made before ``heldout_draw`` existed: the fixed one)."""
    return {"heldout_draw": "fixed", **{k: v for k, v in saved.items() if k != "data_dir" and v is not None}}


def saved_heldout_salt(saved: dict[str, Any]) -> str:
    """The salt of a run's held-out draw, from its ``recipe.json``."""
    return draw_salt(saved_settings(saved)["heldout_draw"], saved["seed"])


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

