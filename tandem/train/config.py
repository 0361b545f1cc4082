"""Training settings: one frozen dataclass, loaded from YAML/JSON with ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tandem.errors import ConfigError
from tandem.models.architectures import ARCHITECTURES
from tandem.settings import describe as _describe, load_settings, setting as _f
from tandem.train.lists import HELDOUT_SALT
from tandem.utils import PRECISIONS

MODES = ("joint", "static", "retriever", "reranker")


def reranker_dropout(attention_dropout: float, reranker_attention_dropout: float) -> float:
    """The re-ranker's attention dropout while training: its own setting, or (at -1) ``attention_dropout``;
    -1 either way keeps the model's."""
    return attention_dropout if reranker_attention_dropout < 0 else reranker_attention_dropout


@dataclass(frozen=True)
class TrainConfig:
    # the recipe's names for the same settings (tandem recipe / demo configs), accepted here too
    ALIASES: ClassVar[dict[str, str]] = {"max_length": "passage_max_length"}

    mode: str = _f("joint", "joint (dynamic listwise distillation), static (frozen re-ranker teacher), "
                            "retriever (contrastive alone), reranker (alone)")
    reranker_loss: str = _f("listwise", "re-ranker objective: listwise (CE over the list) or pointwise (BCE)")
    list_size: int = _f(8, "passages per list: 1 positive + list_size-1 negatives")
    batch_size: int = _f(4, "lists per optimiser step (before accumulation)")
    grad_accum: int = _f(1, "micro-batches accumulated per optimiser step")
    epochs: float = _f(1.0, "passes over the lists (fractions allowed)")
    max_steps: int = _f(0, "stop after this many optimiser steps (0: use epochs)")
    lr_retriever: float = _f(2e-5, "AdamW learning rate of the retriever")
    lr_reranker: float = _f(2e-5, "AdamW learning rate of the re-ranker body")
    lr_head: float = _f(1e-3, "learning rate of the re-ranker's classification head")
    lr_gate: float = _f(0.05, "gated re-ranker: learning rate of its scalars (attention gates, cosine scale, "
                              "lexical weight)")
    fit_mixing_lists: int = _f(64, "gated re-ranker with a new head: fit cosine scale and lexical weight on this "
                                   "many training lists before the first step (0: off)")
    reranker_arch: str = _f("cross", "re-ranker built on an encoder body: cross (plain cross-encoder, new head) or "
                                     "gated (starts equal to the bi-encoder; see tandem.models.gated)")
    gate_init: float = _f(-8.0, "gated re-ranker: initial attention bias between query and passage segments")
    weight_decay: float = _f(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = _f(0.1, "fraction of steps of linear warm-up, then linear decay to 0")
    max_grad_norm: float = _f(1.0, "gradient clipping per model (0: off)")
    temperature: float = _f(0.05, "retriever temperature tau: list softmax over s_de / tau")
    kl_direction: str = _f("ce_to_de", "ce_to_de: KL(P_ce || P_de) as the paper's code; de_to_ce: the reverse")
    kl_reduction: str = _f("batchmean", "batchmean: per-query KL averaged; mean: divided by list size too (Paddle)")
    kl_weight: float = _f(1.0, "weight of the KL term")
    teacher_temperature: float = _f(1.0, "the re-ranker's logits are divided by this in the KL (1: as the paper's "
                                         "code; above 1 a softer teacher whose ranking of the negatives weighs more)")
    kl_routing: str = _f("both", "joint mode: official (RocketQAv2's code: the KL's gradient reaches the retriever "
                                 "only; the re-ranker learns from its own CE) or both (the KL also pulls the "
                                 "re-ranker toward the retriever)")
    kl_gate: bool = _f(False, "the KL term reaches the retriever only while the re-ranker beats it on held-out "
                              "lists (checked at each evaluation; needs heldout_fraction > 0)")
    retriever_ce_weight: float = _f(0.0, "weight of an extra listwise CE on the retriever's own scores")
    denoised_share: float = _f(0.5, "share of each list's negatives drawn from its denoised pool (where it has "
                                      "both pools; tandem mine writes them)")
    positive_pool: str = _f("all", "which labelled positive a list draws: all (any of the query's), or retrieved "
                                   "(those the first stage ranked among the candidates, where the query has one)")
    pseudo_positive_prob: float = _f(0.25, "probability that a list's positive is one of its pseudo-positives "
                                           "(where it has some)")
    in_batch_negatives: bool = _f(False, "the retriever's own CE (retriever mode, or retriever_ce_weight > 0) also "
                                                "takes other lists' passages as negatives")
    query_max_length: int = _f(64, "max query tokens (retriever)")
    passage_max_length: int = _f(256, "max passage tokens (retriever)")
    reranker_max_length: int = _f(256, "max tokens of a (query, passage) pair")
    chunk_size: int = _f(0, "sequences per forward chunk with gradient caching (0: whole batch at once)")
    reranker_micro_lists: int = _f(0, "lists per re-ranker forward and backward within a step (0: the whole batch "
                                      "at once): the re-ranker's losses are per list, so its gradients are the "
                                      "same at no extra compute, with the activations of this many lists alive; "
                                      "chunk_size then applies to the retriever alone")
    attention_dropout: float = _f(-1.0, "dropout on attention probabilities while training (-1: the model's own, "
                                        "0.1 for BERT-likes; 0 lets PyTorch's fused attention run on a CPU too: "
                                        "less memory, faster)")
    reranker_attention_dropout: float = _f(-1.0, "the re-ranker's own attention dropout while training (-1: as "
                                                 "attention_dropout; e.g. 0.1 keeps BERT's for it alone)")
    shared_towers: bool = _f(True, "query and passage towers share weights")
    pooling: str = _f("", "retriever pooling override: mean or cls ('' keeps the model's)")
    normalize: str = _f("", "retriever L2 normalisation override: true/false ('' keeps the model's)")
    seed: int = _f(42, "seed of initialisation, sampling and dropout")
    save_every: int = _f(0, "write a checkpoint every N optimiser steps (0: only at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    eval_every: int = _f(0, "evaluate on held-out lists every N steps (0: only at start and end)")
    eval_corpus: bool = _f(False, "held-out evaluation also retrieves over the whole corpus with the retriever "
                                  "(nDCG@10, RR@10, R@100 of the held-out queries; encodes the corpus each time)")
    keep_best: bool = _f(False, "validate each trained model where the held-out evaluation runs (at the start, "
                                "every eval_every steps, at the end) as a user sees it (the retriever over the "
                                "whole corpus, the re-ranker over a first-stage run: validation_run) and save "
                                "its best state, the start included, instead of its last (early stopping's "
                                "choice); without validation_run the re-ranker is judged on held-out lists")
    keep_best_p: float = _f(0.1, "with keep_best: a trained state replaces the start only if it beats the start's "
                                 "per-query validation scores with a one-sided paired randomisation p below this "
                                 "(1: the mean alone decides; a gain within the noise of a few hundred queries is "
                                 "no gain); among the states that do, the best mean is kept")
    patience: int = _f(0, "with keep_best: stop once this many validations in a row brought no trained model a "
                          "new best (0: train every step)")
    validation_run: str = _f("", "first-stage run (TREC) whose top validation_depth passages the re-ranker "
                                 "re-ranks for the held-out queries when keep_best validates it")
    validation_depth: int = _f(10, "passages per held-out query the re-ranker re-ranks for validation")
    heldout_fraction: float = _f(0.0, "fraction of lists held out for evaluation (by a hash of the query id)")
    heldout_salt: str = _f(HELDOUT_SALT, "the held-out draw: lists whose query id hashes with this salt below "
                                             "heldout_fraction (tandem recipe sets one per seed; tandem mine's "
                                             "heldout_salt must match for a warm-up's calibration queries)")
    heldout_eval_lists: int = _f(0, "evaluate on this many of the held-out lists at most (a fixed subset; 0: all): "
                                    "the others stay out of training all the same")
    allow_untrained_reranker: bool = _f(False, "let joint/static start from a re-ranker with a new, untrained head")
    device: str = _f("auto", "auto, cpu or cuda")
    precision: str = _f("auto", "auto, fp32 or bf16: bf16 autocast (fp32 weights) where auto finds native bf16 "
                                "(a CUDA GPU, or a CPU with AVX-512 BF16 / AMX: ~1.5x faster training here)")
    log_every: int = _f(1, "write the metrics log every N steps")

    def __post_init__(self):
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}"),
            (self.reranker_loss in ("listwise", "pointwise"), "reranker_loss must be listwise or pointwise"),
            (self.list_size >= 2, "list_size must be >= 2 (a positive and at least one negative)"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.kl_direction in ("ce_to_de", "de_to_ce"), "kl_direction must be ce_to_de or de_to_ce"),
            (self.kl_reduction in ("batchmean", "mean"), "kl_reduction must be batchmean or mean"),
            (self.kl_routing in ("official", "both"), "kl_routing must be official or both"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.teacher_temperature > 0, "teacher_temperature must be > 0"),
            (self.reranker_arch in ARCHITECTURES, f"reranker_arch must be one of {sorted(ARCHITECTURES)}"),
            (self.pooling in ("", "mean", "cls"), "pooling must be '', mean or cls"),
            (self.normalize in ("", "true", "false"), "normalize must be '', true or false"),
            (0 <= self.heldout_fraction < 1, "heldout_fraction must be in [0, 1)"),
            (bool(self.heldout_salt), "heldout_salt must not be empty"),
            (0 <= self.denoised_share <= 1, "denoised_share must be in [0, 1]"),
            (0 <= self.pseudo_positive_prob <= 1, "pseudo_positive_prob must be in [0, 1]"),
            (self.positive_pool in ("all", "retrieved"), "positive_pool must be all or retrieved"),
            (not self.kl_gate or self.heldout_fraction > 0, "kl_gate needs heldout_fraction > 0"),
            (self.epochs > 0 or self.max_steps > 0, "set epochs > 0 or max_steps > 0"),
            (self.precision in PRECISIONS, "precision must be auto, fp32 or bf16"),
            (self.patience >= 0 and (not self.patience or self.keep_best), "patience needs keep_best (and >= 0)"),
            (self.validation_depth >= 1, "validation_depth must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> TrainConfig:
    """Settings from a YAML/JSON file (optional; a ``train:`` section if present), then overrides
    (a dict or ``key=value`` strings). Unknown keys and values of the wrong type raise :class:`ConfigError`.
    """
    return load_settings(TrainConfig, path, overrides, section="train")


def describe() -> str:
    """Every setting with its default and help, for ``--help`` texts and docs."""
    return _describe(TrainConfig)
