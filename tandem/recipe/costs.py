"""The recipe's cost model: seconds and peak memory per stage (:func:`plan`, :func:`memory_plan`, one estimate per
row of :data:`tandem.recipe.stages.STAGES`), and the training steps sized to the data and a wall-time budget
(:func:`size_training`)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from tandem.recipe.config import (
    DEEPENED_QUERIES,
    DEEPENED_SCORED,
    FUSED_ATTENTION_SPEEDUP,
    HYBRID_EXTRA_PAIRS,
    RecipeConfig,
    calibration_queries,
    default_rates,
    denoised_queries,
    rerank_depths,
)
from tandem.recipe.stages import STAGES


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


class Cost:
    """Estimated seconds of each kind of stage from measured throughputs (``cfg.rates`` or this CPU's), scaled by
    length.

    Encoding, re-ranking and attention costs are taken as linear in length (a slight underestimate for long
    inputs); training and encoding stages are divided over ``cfg.devices``. ``n_val`` validation queries are
    searched beside the test queries and their top-k re-ranked; ``positives`` is the mean number of labelled
    positives of a training query (calibration_pool positives scores up to five of them).
    """

    def __init__(self, cfg: RecipeConfig, n_passages: int, n_train: int, n_test: int, n_val: int = 0,
                 positives: float = 1.15):
        self.cfg, self.n_passages, self.n_train, self.n_test, self.n_val = cfg, n_passages, n_train, n_test, n_val
        self.ms = ms = cfg.mine_settings(max(1, n_train))  # (and `mine:` checked early)
        # the calibration queries' extra pairs: the rest of their candidate list, or (calibration_pool positives) up
        # to calibration_positives labelled positives
        self.per_top = cfg.denoise_top or cfg.top_n
        self.calibration_pairs = (cfg.top_n - self.per_top if ms.calibration_pool == "candidates"
                                  else min(positives, ms.calibration_positives) if ms.calibration_positives
                                  else positives)
        rates = {**default_rates(), **(cfg.rates or {})}
        dev = max(1, cfg.devices)
        self.enc = rates["encode_per_s"] * 128 / cfg.max_length * dev
        self.seq = rates["train_seq_per_s"] * 128 / cfg.max_length * dev
        self.pairs = rates["rerank_pairs_per_s"] * 160 / cfg.reranker_max_length * dev
        self.queries = self.enc * cfg.max_length / cfg.query_max_length  # queries/s: short texts
        self.searched = n_test + n_val
        # hybrid: the fused top-k adds ~45% new pairs to the dense top-k (measured on SciFact, k = 20)
        self.extra = HYBRID_EXTRA_PAIRS if cfg.hybrid and cfg.hybrid_rerank else 1.0
        # re-ranker training pairs: at their own measured rate where the rates have one (the probe's), else at the
        # retriever's per-sequence rate (the constants, measured so)
        self.rt = rates["rerank_train_pairs_per_s"] * 160 / cfg.reranker_max_length * dev \
            if rates.get("rerank_train_pairs_per_s") else self.seq

    def factor(self, stage: str, model: str = "retriever") -> float:
        return training_cost_factor(self.cfg, stage, model)

    def heldout_eval(self, stage: str, steps: int, scorers: str) -> float:
        """Seconds of a training stage's held-out list evaluations (at the start, every eval_every, at the end)."""
        o = self.cfg.train_overrides("", steps, stage)
        lists = round(float(o.get("heldout_fraction", 0.0)) * self.n_train)
        lists = min(lists, int(o.get("heldout_eval_lists", 0) or lists))
        every = int(o.get("eval_every", 0) or 0)
        evals = 2 + (steps // every if every else 0)
        per_list = int(o["list_size"]) * (("r" in scorers) / self.enc + ("c" in scorers) / self.pairs)
        return evals * lists * per_list

    def validations(self, stage: str, steps: int, scorers: str) -> float:
        """Seconds of validating a stage's models while it trains (val_every): at the start, every val_every steps
        and at the end, the retriever over the corpus, the re-ranker over the validation top-k."""
        cfg = self.cfg
        if not (cfg.val_every and self.n_val):
            return 0.0
        evals = 2 + max(0, steps - 1) // cfg.val_every
        per = ("r" in scorers) * (self.n_passages / self.enc + self.n_val / self.queries) \
            + ("c" in scorers) * self.n_val * max(rerank_depths(cfg)) / self.pairs
        return evals * per

    def _alone(self, steps: int, lists_per_step: int, list_size: int, stage: str = "") -> float:
        """Seconds of retriever-only training: a query costs query_max_length / max_length of a passage."""
        cfg = self.cfg
        return steps * lists_per_step * (list_size + cfg.query_max_length / cfg.max_length) / self.seq \
            * self.factor(stage) + 20

    # ---- one estimate per kind of stage (the table's rows call these) ----------------------------------------
    def bm25(self) -> float:
        return 5.0 + self.n_passages / 20_000

    def index(self) -> float:
        return self.n_passages / self.enc + 10

    def search(self) -> float:
        return self.searched / self.queries + 5

    def fuse(self) -> float:
        return 2.0 + self.searched / 1000

    def lists(self) -> float:
        return self.n_train / self.queries + 5

    def retriever_warmup(self) -> float:
        steps = self.cfg.retriever_warmup_steps
        return self._alone(steps, *self.cfg.stage_shape("retriever-warmup"), stage="retriever-warmup") \
            + self.heldout_eval("retriever-warmup", steps, "r") + self.validations("retriever-warmup", steps, "r")

    def warmup(self) -> float:
        cfg = self.cfg
        wb, wl = cfg.stage_shape("warmup")
        lexical_fit = min(cfg.lexical_fit_queries, self.n_train) * cfg.top_n / self.pairs + 5 \
            if cfg.fits_lexical_weight else 0.0
        return cfg.warmup_steps * wb * wl / self.rt * self.factor("warmup", "reranker") + 30 \
            + self.heldout_eval("warmup", cfg.warmup_steps, "c") + self.validations("warmup", cfg.warmup_steps, "c") \
            + lexical_fit

    def denoise(self) -> float:
        cfg, n = self.cfg, self.n_train
        deeper_pairs = max(0, denoised_queries(cfg, n) - calibration_queries(cfg, n)) * DEEPENED_QUERIES \
            * max(0, self.ms.denoise_depth - cfg.top_n) * DEEPENED_SCORED  # (a search to the depth costs ~nothing)
        return (denoised_queries(cfg, n) * self.per_top + calibration_queries(cfg, n) * self.calibration_pairs
                + deeper_pairs) / self.pairs + 10

    def joint(self) -> float:
        cfg = self.cfg
        jb, jl = cfg.stage_shape("joint")
        return cfg.joint_steps * jb * (jl * self.factor("joint", "reranker") / self.rt
                                       + (jl + 1) * self.factor("joint") / self.seq) + 30 \
            + self.heldout_eval("joint", cfg.joint_steps, "rc") + self.validations("joint", cfg.joint_steps, "rc")

    def val_rerank(self) -> float:
        return self.n_val * max(rerank_depths(self.cfg)) * self.extra / self.pairs + 5

    def rerank(self) -> float:
        return self.n_test * self.cfg.rerank_k * self.extra / self.pairs + 5

    def retriever_alone(self) -> float:  # the joint stage's retriever half
        cfg = self.cfg
        return self._alone(cfg.joint_steps, *cfg.stage_shape("joint"), "joint") \
            + self.validations("joint", cfg.joint_steps, "r")

    def retriever_only(self) -> float:
        cfg = self.cfg
        return cfg.retriever_only_steps * cfg.batch_size * (cfg.list_size + 1) / self.seq \
            + self.validations("retriever-only", cfg.retriever_only_steps, "r")


def plan(cfg: RecipeConfig, n_passages: int, n_train: int, n_test: int, n_val: int = 0,
         positives: float = 1.15) -> dict[str, float]:
    """Estimated seconds per stage (those the recipe runs for this config and data, in run order): see
    :class:`Cost`."""
    cost = Cost(cfg, n_passages, n_train, n_test, n_val, positives)
    return {s.name: s.seconds(cost) for s in STAGES
            if s.when(cfg) and (s.planned is None or s.planned(cost))}


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


class Memory:
    """Estimated peak memory (bytes) of each kind of stage: on a GPU the device's, on a CPU the process's resident
    memory.

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

    def __init__(self, cfg: RecipeConfig, n_passages: int, shape: dict[str, int], gpu: bool):
        self.cfg, self.n_val = cfg, 0
        self.h, self.layers, self.heads, params = shape["hidden"], shape["layers"], shape["heads"], shape["params"]
        # bytes per stored activation / 2: 16-bit on a GPU; on a CPU as fp32 at either precision, since CPU
        # autocast computes only the matmuls in bf16 (layer norms, and so the residual stream, stay fp32): the
        # demo in bf16 on an AVX-512 BF16 EPYC peaked at 2.59 GiB where a 16-bit plan said 1.94, the fp32 one 2.29
        self.width = 1 if gpu else 2
        self.weights, self.states = 4.0 * params, 16.0 * params
        self.base = 0.0 if gpu else PROCESS_BASE_BYTES
        self.vectors = 4.0 * n_passages * self.h

    def per_token(self, length: int, arch: str, attention_dropout: float) -> float:  # stored activations, all layers
        from tandem.models.architectures import architecture

        fused_kernel = architecture(arch).fused_attention if arch else True  # "": the retriever, a plain encoder
        fused = attention_dropout == 0 and fused_kernel
        k = ACTIVATION_FIT[(not fused_kernel, attention_dropout == 0)]
        return k * self.width * (34 * self.h + (0 if fused else 5 * self.heads * length)) * self.layers

    def transient(self, length: int, batch: int = 32) -> float:  # inference: one layer's tensors of a batch
        return self.width * 2 * batch * length * (10 * self.h + 3 * self.heads * length)

    def live(self, stage: str, retriever: bool, reranker: bool) -> float:
        from tandem.train.config import reranker_dropout

        cfg = self.cfg
        o = cfg.train_overrides("", 0, stage)
        chunk = int(o.get("chunk_size", 0) or 0)
        micro = int(o.get("reranker_micro_lists", 0) or 0)
        batch = max(1, int(o["batch_size"]) // max(1, cfg.devices))
        g, plen, qlen = int(o["list_size"]), int(o["passage_max_length"]), int(o["query_max_length"])
        rlen, drop = int(o["reranker_max_length"]), float(o.get("attention_dropout", -1.0))
        r = ce = 0.0
        if retriever:
            r = chunk * plen * self.per_token(plen, "", drop) if chunk else batch * (
                g * plen * self.per_token(plen, "", drop) + qlen * self.per_token(qlen, "", drop))
        if reranker:
            seqs = micro * g if 0 < micro < batch else (min(chunk, batch * g) if chunk else batch * g)
            ce = seqs * rlen * self.per_token(rlen, str(o.get("reranker_arch", cfg.reranker_arch)),
                                              reranker_dropout(drop, float(o.get("reranker_attention_dropout", -1.0))))
        return max(r, ce) if chunk else r + ce  # gradient caching frees the retriever's graph before the re-ranker's

    # ---- one estimate per kind of stage (the table's rows call these) ----------------------------------------
    def index(self) -> float:
        return self.base + self.weights + self.vectors + self.transient(self.cfg.max_length)

    def inference(self) -> float:  # a re-ranker scoring pairs
        return self.base + self.weights + self.transient(self.cfg.reranker_max_length)

    def warmup(self) -> float:
        return self.base + self.states + self.live("warmup", False, True)

    def joint(self) -> float:
        return self.base + 2 * self.states + self.live("joint", True, True)

    def retriever_warmup(self) -> float:
        return self.base + self.states + self.live("retriever-warmup", True, False)

    def retriever_alone(self) -> float:
        return self.base + self.states + self.live("joint", True, False)

    def retriever_only(self) -> float:
        return self.base + self.states + self.live("", True, False)


def memory_plan(cfg: RecipeConfig, n_passages: int, shape: dict[str, int], gpu: bool) -> dict[str, float]:
    """Estimated peak memory (bytes) per stage that runs a model (see :class:`Memory`), in run order."""
    mem = Memory(cfg, n_passages, shape, gpu)
    return {s.name: s.memory(mem) for s in STAGES if s.memory is not None and s.when(cfg)}
