"""The trainer: dynamic listwise distillation (RocketQAv2) and its ablations.

Per step, each of B lists holds a positive and G-1 negatives. The retriever gives s_de (B, G),
the re-ranker s_ce (B, G); the loss depends on the mode:

- ``joint``:     L = w_kl * KL(P_ce || P_de) + CE(s_ce) [+ w_r * CE(s_de / tau)], both optimisers step
                 (the paper's dynamic distillation). ``kl_routing=official`` (RocketQAv2's code, where
                 Paddle's kldiv_loss has no gradient for its target) detaches the re-ranker inside the KL, so
                 the KL trains the retriever only and the re-ranker learns from its CE; ``both`` lets the KL
                 pull the re-ranker toward the retriever as well.
- ``static``:    the re-ranker is frozen and is a constant teacher: L = w_kl * KL [+ w_r * CE].
- ``retriever``: InfoNCE on the retriever's list (optionally in-batch negatives).
- ``reranker``:  listwise CE, or pointwise BCE, on the re-ranker alone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from tandem.data.types import Corpus
from tandem.errors import IncompatibleArtifactError, UsageError
from tandem.io import atomic_dir, output_dir, write_json
from tandem.losses import group_ce, info_nce, pointwise_bce, rocketqa_kl
from tandem.models.reranker import Reranker
from tandem.models.retriever import Retriever
from tandem.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tandem.train.chunking import CachedChunks
from tandem.train.config import TrainConfig, reranker_dropout
from tandem.train.distributed import barrier, broadcast_parameters, mean_over_ranks, sum_gradients, world
from tandem.train.lists import Group, ListSampler, TrainingList, heldout_indices
from tandem.train.validation import BestStates, StageValidator
from tandem.utils import autocast, progress_bar

log = logging.getLogger(__name__)


def _param_groups(model: torch.nn.Module, lr_of, wd: float):
    """AdamW groups by (learning rate, decay); ``lr_of(name)`` gives each parameter's rate."""
    groups: dict[tuple[float, float], list] = {}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = 0.0 if (p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name) else wd
        groups.setdefault((lr_of(name), decay), []).append(p)
    return [{"params": ps, "lr": lr_, "weight_decay": d} for (lr_, d), ps in groups.items()]


def reranker_lr(cfg: TrainConfig, reranker: Reranker):
    """Body at lr_reranker; a new head (and the gated model's mixing weights) at lr_head; gates at lr_gate."""
    new_head = not reranker.settings.trained

    def lr_of(name: str) -> float:
        if name in ("gate", "scale", "w_lex"):
            return cfg.lr_gate
        if not name.startswith("model."):
            return cfg.lr_head
        if new_head and name.startswith(("model.classifier", "model.score")):
            return cfg.lr_head
        return cfg.lr_reranker

    return lr_of


def _linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def list_metrics(scores: Tensor) -> dict[str, float]:
    """Metrics of the positive (column 0) within each list, averaged: nDCG@10, MRR@10, accuracy@1, and two
    continuous ones that move with every list (``ce``: listwise cross-entropy, ``p_pos``: the softmax probability
    of the positive).

    Ties count against the positive (pessimistic): a scorer that gives every passage the same score ranks the
    positive last, not first.
    """
    scores = scores.float()
    rank = (scores[:, 1:] >= scores[:, :1]).sum(1).float() + 1  # (B,) rank of the positive; ties go against it
    ndcg = torch.where(rank <= 10, 1.0 / torch.log2(rank + 1), torch.zeros_like(rank))
    rr = torch.where(rank <= 10, 1.0 / rank, torch.zeros_like(rank))
    log_p = torch.log_softmax(scores, dim=-1)[:, 0]  # (B,)
    return {"nDCG@10": ndcg.mean().item(), "MRR@10": rr.mean().item(), "acc@1": (rank == 1).float().mean().item(),
            "ce": (-log_p).mean().item(), "p_pos": log_p.exp().mean().item()}


@dataclass
class TrainResult:
    steps: int
    seconds: float
    sequences_per_s: float
    final_losses: dict[str, float]
    heldout: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    validation: dict[str, Any] = field(default_factory=dict)  # keep_best: each model's validations and best step


def set_attention_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the dropout on attention probabilities (``attention.self.dropout`` in BERT-family bodies, which
    transformers passes to ``scaled_dot_product_attention``) to ``p``; returns how many were set. At 0, PyTorch
    runs its fused attention kernel on a CPU too, storing no attention matrices for the backward pass."""
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Dropout) and name.endswith("attention.self.dropout"):
            mod.p = p
            n += 1
    if not n:
        raise IncompatibleArtifactError(f"attention_dropout: {type(model).__name__} has no BERT-style attention "
                                        "dropout to set (leave attention_dropout at -1 for this model)")
    return n


class Trainer:
    """Trains a retriever and/or re-ranker on training lists; see the module docstring for modes."""

    def __init__(self, cfg: TrainConfig, corpus: Corpus, queries: Mapping[str, str], lists: list[TrainingList],
                 out: str | Path, retriever: Retriever | None = None, reranker: Reranker | None = None,
                 progress: bool = True, validator: StageValidator | None = None):
        self.cfg = cfg
        self.corpus = corpus
        self.out = Path(out)
        self.progress = progress
        self.rank, self.world, local_rank = world()
        self.main = self.rank == 0  # the process that writes logs, checkpoints and models
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if cfg.device == "auto" else cfg.device))
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local_rank)
        self.use_retriever = cfg.mode in ("joint", "static", "retriever")
        self.use_reranker = cfg.mode in ("joint", "static", "reranker")
        self.train_reranker = cfg.mode in ("joint", "reranker")
        if self.use_retriever and retriever is None:
            raise UsageError(f"mode {cfg.mode} needs a retriever")
        if self.use_reranker and reranker is None:
            raise UsageError(f"mode {cfg.mode} needs a re-ranker")
        if cfg.mode in ("joint", "static") and not reranker.settings.trained and not cfg.allow_untrained_reranker:
            raise UsageError(
                f"the re-ranker {reranker.name!r} has a new, untrained classification head: as a teacher it would "
                "pull the retriever toward noise. Warm it up first (tandem train --mode reranker ..., then pass "
                "--reranker OUT/reranker), or set allow_untrained_reranker=true to train from it anyway")
        self.retriever = retriever.to(self.device) if self.use_retriever else None
        self.reranker = reranker.to(self.device) if self.use_reranker else None
        inference = [self.reranker] if self.reranker is not None else []
        if self.retriever is not None:
            inference += [self.retriever.query_encoder, self.retriever.passage_encoder]
        for m in inference:
            m.precision = cfg.precision  # held-out evaluation runs at the training precision
        for m, p in ((self.retriever, cfg.attention_dropout),
                     (self.reranker, reranker_dropout(cfg.attention_dropout, cfg.reranker_attention_dropout))):
            if m is not None and p >= 0:
                set_attention_dropout(m, p)
        if cfg.mode == "static":
            self.reranker.eval()
            self.reranker.requires_grad_(False)
        if self.world > 1:
            for m in (self.retriever, self.reranker):
                if m is not None:
                    broadcast_parameters(m)
        # held-out lists: a split by query id (hashed with heldout_salt), independent of the list count and order
        held = set(heldout_indices([lst.qid for lst in lists], cfg.heldout_fraction, cfg.heldout_salt))
        self.heldout = [lists[i] for i in sorted(held)]
        self.validator, self.best = validator, None
        if cfg.keep_best:
            if self.validator is None and self.heldout:  # all held-out queries, over the whole corpus
                self.validator = self._heldout_validator(queries)
            self.best = BestStates(self.out / "best", self.main)
            if not self.validated_models() or not (self.validator is not None and len(self.validator)):
                raise UsageError("keep_best needs validation queries: held-out lists (heldout_fraction > 0) "
                                  "or a validator")
        if cfg.heldout_eval_lists and len(self.heldout) > cfg.heldout_eval_lists:  # cheaper diagnostics
            from tandem.train.lists import first_by_hash

            keep = set(first_by_hash([lst.qid for lst in self.heldout], cfg.heldout_eval_lists, cfg.heldout_salt))
            self.heldout = [lst for lst in self.heldout if lst.qid in keep]
        self.lists = [lst for i, lst in enumerate(lists) if i not in held]
        if not self.lists:
            raise UsageError("no training lists left (empty lists file, or heldout_fraction too large)")
        self.sampler = ListSampler(self.lists, queries, cfg.list_size - 1, cfg.seed, cfg.denoised_share,
                                   cfg.pseudo_positive_prob, retrieved_positives=cfg.positive_pool == "retrieved")
        # held-out lists: labelled positives and the undenoised pool only, so that runs on differently built
        # lists (undenoised, denoised, hybrid) are measured on the same lists
        self.held_sampler = (ListSampler(self.heldout, queries, cfg.list_size - 1, cfg.seed, denoised_share=0.0,
                                         labelled_only=True) if self.heldout else None)
        self.micro_per_epoch = math.ceil(len(self.lists) / cfg.batch_size)
        steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if self.use_retriever:
            self.optimizers["retriever"] = torch.optim.AdamW(
                _param_groups(self.retriever, lambda _: cfg.lr_retriever, cfg.weight_decay))
        if self.train_reranker:
            self.optimizers["reranker"] = torch.optim.AdamW(
                _param_groups(self.reranker, reranker_lr(cfg, reranker), cfg.weight_decay))
        self.schedulers = {k: _linear_schedule(o, warmup, self.total_steps) for k, o in self.optimizers.items()}
        self.step = 0
        self.gate_open = not cfg.kl_gate  # with kl_gate, closed until the re-ranker beats the retriever
        # the loss terms of this mode (a rank without lists in a micro-batch reports them as 0)
        g = cfg.list_size
        self.term_names = sorted(self.losses(torch.zeros(1, g) if self.use_retriever else None,
                                             torch.zeros(1, g) if self.use_reranker else None))
        self.history: list[dict[str, Any]] = []

    # ---- one step ---------------------------------------------------------------------------
    def _groups(self, micro: int) -> list[Group]:
        epoch, j = divmod(micro, self.micro_per_epoch)
        idx = self.sampler.order(epoch)[j * self.cfg.batch_size : (j + 1) * self.cfg.batch_size]
        return [self.sampler.group(epoch, int(i)) for i in idx]

    def _texts(self, groups: list[Group]) -> tuple[list[str], list[str], list[str]]:
        queries = [g.query for g in groups]
        passages = [self.corpus.text(pid) for g in groups for pid in g.pids]
        pair_queries = [g.query for g in groups for _ in g.pids]
        return queries, passages, pair_queries

    def losses(self, s_de: Tensor | None, s_ce: Tensor | None, q: Tensor | None = None,
               p: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms of the mode from (B, G) scores (and vectors for in-batch negatives)."""
        cfg = self.cfg
        terms: dict[str, Tensor] = {}
        if cfg.mode == "retriever":
            if cfg.in_batch_negatives and q is not None:
                terms["retriever_ce"] = info_nce(q, p, cfg.list_size, cfg.temperature, in_batch=True)
            else:
                terms["retriever_ce"] = group_ce(s_de, cfg.temperature)
        elif cfg.mode == "reranker":
            terms["reranker"] = group_ce(s_ce) if cfg.reranker_loss == "listwise" else pointwise_bce(s_ce)
        else:
            teacher = s_ce if cfg.mode == "joint" and cfg.kl_routing == "both" else s_ce.detach()
            student = s_de if self.gate_open else s_de.detach()  # a closed gate keeps KL off the retriever
            terms["kl"] = cfg.kl_weight * rocketqa_kl(teacher, student, cfg.temperature, cfg.kl_direction,
                                                      cfg.kl_reduction, cfg.teacher_temperature)
            if cfg.mode == "joint":
                terms["reranker"] = group_ce(s_ce) if cfg.reranker_loss == "listwise" else pointwise_bce(s_ce)
            if cfg.retriever_ce_weight:
                own = (info_nce(q, p, cfg.list_size, cfg.temperature, in_batch=True)
                       if cfg.in_batch_negatives and q is not None else group_ce(s_de, cfg.temperature))
                terms["retriever_ce"] = cfg.retriever_ce_weight * own
        terms["loss"] = sum(terms.values())
        return terms

    def micro_step(self, groups: list[Group], scale: float = 1.0) -> dict[str, float]:
        """Forward and backward on one micro-batch of lists; returns the loss terms."""
        queries, passages, pair_queries = self._texts(groups)
        b, g = len(groups), self.cfg.list_size
        chunk = self.cfg.chunk_size
        q = p = s_de = s_ce = None
        caches: list[CachedChunks] = []
        if self.use_retriever:
            if chunk:
                cq = CachedChunks(self.retriever.embed_queries, queries, chunk)
                cp = CachedChunks(self.retriever.embed_passages, passages, chunk)
                caches += [cq, cp]
                q, p = cq.value, cp.value
            else:
                q, p = self.retriever.embed_queries(queries), self.retriever.embed_passages(passages)
            s_de = Retriever.list_scores(q, p)  # (B, G)
        if self.use_reranker:
            pairs = list(zip(pair_queries, passages))
            fn = lambda ps: self.reranker.score([x for x, _ in ps], [y for _, y in ps])  # noqa: E731
            micro = self.cfg.reranker_micro_lists
            if self.train_reranker and 0 < micro < b:  # chunk_size then caches the retriever's side alone
                return self._micro_lists_step(groups, q, p, s_de, pairs, fn, micro, scale, caches)
            if not self.train_reranker:
                with torch.no_grad():
                    s_ce = torch.cat([fn(pairs[i : i + (chunk or len(pairs))])
                                      for i in range(0, len(pairs), chunk or len(pairs))])
            elif chunk:
                cc = CachedChunks(fn, pairs, chunk)
                caches.append(cc)
                s_ce = cc.value
            else:
                s_ce = fn(pairs)
            s_ce = s_ce.view(b, g)  # (B, G)
        terms = self.losses(s_de.float() if s_de is not None else None, s_ce.float() if s_ce is not None else None,
                            q, p)
        (terms["loss"] * scale).backward()
        for cache in caches:
            cache.backward()
        return {k: v.item() for k, v in terms.items()}

    def _micro_lists_step(self, groups: list[Group], q, p, s_de, pairs, fn, micro: int, scale: float,
                          caches: list[CachedChunks]) -> dict[str, float]:
        """:meth:`micro_step` with the re-ranker run ``micro`` lists at a time (``reranker_micro_lists``).

        Every loss term that involves the re-ranker (its CE, the KL) is a mean over lists of a function of one
        list's scores, so a slice of ``n`` of the ``b`` lists contributes ``n / b`` of it: each slice is run,
        scored and backpropagated through the re-ranker alone, and freed before the next. The KL's gradient
        with respect to the retriever's scores is collected on a detached copy of them and sent through the
        retriever once at the end, with the retriever's own loss (in-batch negatives need the whole batch;
        ``caches``: the retriever's gradient-cached chunks, with ``chunk_size``). Same loss and gradients as the
        single pass, with one slice's re-ranker activations alive at a time.
        """
        b, g = len(groups), self.cfg.list_size
        leaf = s_de.detach().float().requires_grad_(True) if s_de is not None else None
        sums: dict[str, float] = {}
        scores = []
        for start in range(0, b, micro):
            rows = slice(start, min(b, start + micro))
            s_ce = fn(pairs[rows.start * g : rows.stop * g]).view(-1, g).float()
            terms = self.losses(leaf[rows] if leaf is not None else None, s_ce)
            terms.pop("retriever_ce", None)  # the retriever's own loss, over the whole batch, below
            terms.pop("loss")
            share = (rows.stop - rows.start) / b
            (sum(terms.values()) * (share * scale)).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + share * v.item()
            scores.append(s_ce.detach())
        if s_de is not None:
            full = self.losses(s_de.float(), torch.cat(scores), q, p)
            own = full.get("retriever_ce")
            loss = (s_de.float() * leaf.grad).sum() if leaf.grad is not None else s_de.sum() * 0.0
            if own is not None:
                sums["retriever_ce"] = own.item()
                loss = loss + own * scale
            loss.backward()
            for cache in caches:
                cache.backward()
        sums["loss"] = sum(sums.values())
        return sums

    def _autocast(self):
        """bf16 autocast where ``precision`` resolves to bf16 (auto: a GPU with bf16, or a CPU with native bf16
        matmuls); weights and optimiser states stay fp32."""
        return autocast(self.cfg.precision, self.device)

    def optimizer_step(self) -> dict[str, float]:
        norms = {}
        for name, opt in self.optimizers.items():
            model = self.retriever if name == "retriever" else self.reranker
            if self.world > 1:
                sum_gradients(model.parameters())
            if self.cfg.max_grad_norm > 0:
                norms[f"grad_norm_{name}"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                                  self.cfg.max_grad_norm))
            opt.step()
            self.schedulers[name].step()
            opt.zero_grad(set_to_none=True)
        return norms

    # ---- validation (keep_best) -------------------------------------------------------------
    def _heldout_validator(self, queries: Mapping[str, str], with_run: bool = True) -> StageValidator:
        """The held-out lists' queries over the whole corpus; ``with_run``: and ``validation_run`` to re-rank."""
        from tandem.data import read_run

        qrels = {lst.qid: {e["pid"]: 1 for e in lst.positives if not e.get("pseudo")} for lst in self.heldout}
        first = read_run(self.cfg.validation_run) if self.cfg.validation_run and with_run else None
        return StageValidator({q: queries[q] for q in qrels if q in queries}, qrels, self.corpus, first,
                              self.cfg.validation_depth)

    def validated_models(self) -> dict[str, torch.nn.Module]:
        """The models this mode trains, by name."""
        out: dict[str, torch.nn.Module] = {}
        if self.use_retriever:
            out["retriever"] = self.retriever
        if self.train_reranker:
            out["reranker"] = self.reranker
        return out

    def validate(self, held: Mapping[str, Any]) -> dict[str, Any]:
        """Validate each trained model at this step and keep its state if it is its best; a re-ranker without a
        first-stage run to re-rank is judged on its held-out list nDCG@10 (``held``)."""
        out: dict[str, Any] = {}
        for name, model in self.validated_models().items():
            if self.validator is not None and self.validator.can_score(name):
                metrics = getattr(self.validator, name)(model)
                source = "corpus" if name == "retriever" else f"re-ranked top-{self.validator.depth}"
            elif name in held:
                metrics, source = dict(held[name]), "held-out lists"
            else:
                continue
            better = self.best.offer(name, self.step, {**metrics, "source_" + source: 1}, "nDCG@10", model,
                                     self.cfg.keep_best_p)
            out[name] = {"nDCG@10": round(metrics["nDCG@10"], 6), "source": source, "best": better}
        return out

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate_heldout(self, batch_size: int = 16) -> dict[str, Any]:
        """List metrics of both models on the held-out lists; with ``kl_gate``, opens or closes the gate."""
        held = self._heldout_metrics(batch_size)
        if self.cfg.kl_gate and "retriever" in held and "reranker" in held:
            self.gate_open = held["reranker"]["nDCG@10"] > held["retriever"]["nDCG@10"]
        return held

    @torch.no_grad()
    def _heldout_metrics(self, batch_size: int) -> dict[str, Any]:
        if not self.heldout:
            return {}
        groups = [self.held_sampler.group(0, i) for i in range(len(self.heldout))]
        out: dict[str, list[Tensor]] = {"retriever": [], "reranker": []}
        models = [m for m in (self.retriever, self.reranker) if m is not None]
        modes = [m.training for m in models]
        for m in models:
            m.eval()
        try:
            for i in range(0, len(groups), batch_size):
                chunk = groups[i : i + batch_size]
                queries, passages, pair_queries = self._texts(chunk)
                if self.retriever is not None:  # at the loss's temperature, as its CE and KL see the list
                    out["retriever"].append(self.retriever.score(queries, passages).float().cpu()
                                            / self.cfg.temperature)
                if self.reranker is not None:
                    out["reranker"].append(self.reranker.score(pair_queries, passages).view(len(chunk),
                                                                                            -1).float().cpu())
        finally:
            for m, mode in zip(models, modes):
                m.train(mode)
        metrics = {k: list_metrics(torch.cat(v)) for k, v in out.items() if v}
        if self.cfg.eval_corpus and self.retriever is not None:
            metrics["retriever_corpus"] = self._corpus_metrics()
        return metrics

    def _corpus_metrics(self) -> dict[str, float]:
        """The retriever over the whole corpus for the held-out queries: nDCG@10, RR@10, R@100."""
        if getattr(self, "_corpus_validator", None) is None:
            self._corpus_validator = self._heldout_validator(
                {lst.qid: self.held_sampler.query(i) for i, lst in enumerate(self.heldout)}, with_run=False)
        metrics = self._corpus_validator.retriever(self.retriever)
        return {k: metrics[k] for k in ("nDCG@10", "RR@10", "R@100")}

    # ---- checkpoints ------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        cfg = self.cfg.to_dict()
        for k in ("max_steps", "epochs", "save_every", "keep_checkpoints", "eval_every", "eval_corpus", "log_every",
                  "device", "patience"):
            cfg.pop(k)
        models = {"retriever": self.retriever.query_encoder.name if self.retriever is not None else None,
                  "reranker": self.reranker.name if self.reranker is not None else None}
        return {"config": cfg, "lists": len(self.lists), "heldout": len(self.heldout), "models": models}

    def save_checkpoint(self) -> Path | None:
        if not self.main:
            return None
        tensors = {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                   "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}
        if self.retriever is not None:
            tensors["retriever"] = self.retriever.state_dict()
        if self.reranker is not None and self.train_reranker:
            tensors["reranker"] = self.reranker.state_dict()
        return save_checkpoint(self.out / "checkpoints", self.step, tensors,
                               {**self._fingerprint(), "gate_open": self.gate_open}, self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Continue from the latest checkpoint under ``out``, if there is one."""
        path = latest_checkpoint(self.out / "checkpoints")
        if path is None:
            return False
        tensors, state = load_checkpoint(path, self._fingerprint())
        if self.retriever is not None:
            self.retriever.load_state_dict(tensors["retriever"])
        if "reranker" in tensors:
            self.reranker.load_state_dict(tensors["reranker"])
        for k, o in self.optimizers.items():
            o.load_state_dict(tensors["optimizers"][k])
            self.schedulers[k].load_state_dict(tensors["schedulers"][k])
        self.step = int(state["step"])
        self.gate_open = bool(state.get("gate_open", not self.cfg.kl_gate))
        log.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)
        return True

    # ---- the loop ---------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.main:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """After a resume, drop log lines past the checkpoint so the log has each step once."""
        path = self.out / "metrics.jsonl"
        if not path.exists() or not self.main:
            return
        keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= self.step]
        path.write_text("".join(l + "\n" for l in keep))

    def train(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Run to ``total_steps`` (or ``stop_after`` steps, for tests of killed runs) and save the models."""
        output_dir(self.out)
        if self.main:
            write_json(self.out / "config.json", self.cfg.to_dict())
        if resume and self.resume():
            self._trim_log()
        elif (self.out / "metrics.jsonl").exists() and self.main:
            (self.out / "metrics.jsonl").unlink()
        barrier()
        for m in (self.retriever, self.reranker):
            if m is not None:
                m.train(m is self.retriever or self.train_reranker)
        if self.step == 0 and self.cfg.fit_mixing_lists and self.train_reranker \
                and hasattr(self.reranker, "fit_mixing") and not self.reranker.settings.trained:
            # subtle: an epoch number training never reaches, so the training order and samples stay the same
            groups = [self.sampler.group(10**6, int(i)) for i in self.sampler.order(10**6)[: self.cfg.fit_mixing_lists]]
            _, passages, pair_queries = self._texts(groups)
            fit = self.reranker.fit_mixing(pair_queries, passages, self.cfg.list_size)
            log.info("gated re-ranker mixing fitted on %d lists: %s", fit["lists"], fit)
            self._log({"step": 0, "fit_mixing": fit})
        if self.step == 0:
            held = self.evaluate_heldout()
            record = {"step": 0, "heldout": held, "world_size": self.world}
            if self.best is not None:
                record["validation"] = self.validate(held)
            if held or self.world > 1 or self.best is not None:
                self._log(record)
        t0, seqs, last = time.perf_counter(), 0, {}
        per_list = self.cfg.list_size * (int(self.use_retriever) + int(self.use_reranker)) + int(self.use_retriever)
        with progress_bar(self.total_steps, f"train ({self.cfg.mode})", self.progress and self.main,
                          unit="step") as bar:
            bar.update(self.step)
            while self.step < self.total_steps:
                if stop_after is not None and self.step >= stop_after:
                    return TrainResult(self.step, time.perf_counter() - t0, 0.0, last, out=self.out)
                sums: dict[str, float] = {}
                for a in range(self.cfg.grad_accum):
                    groups = self._groups(self.step * self.cfg.grad_accum + a)
                    local = groups[self.rank :: self.world]
                    share = len(local) / len(groups)  # this rank's part of the global batch
                    with self._autocast():
                        terms = (self.micro_step(local, share / self.cfg.grad_accum) if local
                                 else dict.fromkeys(self.term_names, 0.0))
                    if self.world > 1:
                        terms = mean_over_ranks(terms, share)
                    seqs += len(groups) * per_list
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v / self.cfg.grad_accum
                norms = self.optimizer_step()
                self.step += 1
                last = sums
                record = {"step": self.step, **{k: round(v, 6) for k, v in sums.items()}, **norms,
                          "lr": self.schedulers[next(iter(self.schedulers))].get_last_lr()[0]}
                stop = False
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and self.step < self.total_steps:
                    record["heldout"] = self.evaluate_heldout()
                    if self.best is not None:
                        record["validation"] = self.validate(record["heldout"])
                        stop = all(self.best.stale(n, self.cfg.patience) for n in self.validated_models())
                if self.cfg.kl_gate:
                    record["kl_gate_open"] = self.gate_open
                if self.step % self.cfg.log_every == 0 or "heldout" in record:
                    self._log(record)
                bar.set_postfix({k: f"{v:.3f}" for k, v in sums.items()})
                bar.update(1)
                if self.cfg.save_every and self.step % self.cfg.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                    barrier()
                if stop:
                    log.info("early stop at step %d of %d: %d validations without a new best (patience)",
                             self.step, self.total_steps, self.cfg.patience)
                    break
        seconds = time.perf_counter() - t0
        held = self.evaluate_heldout()
        final: dict[str, Any] = {"step": self.step, "heldout": held, "final": True}
        validation: dict[str, Any] = {}
        if self.best is not None:
            final["validation"] = self.validate(held)
            barrier()  # the best states are on disk before any rank reads them
            restored = [n for n, m in self.validated_models().items() if self.best.restore(n, m, self.step)]
            validation = self.best.summary()
            for name, entry in validation.items():
                entry["restored"] = name in restored
                last_v = entry["history"][-1]["nDCG@10"] if entry["history"] else float("nan")
                if name in restored:
                    log.info("keep_best: %s kept from step %d (validation nDCG@10 %.4f) over step %d (%.4f)",
                             name, entry["best_step"], entry["best"], self.step, last_v)
                else:
                    log.info("keep_best: %s kept at its last step %d (validation nDCG@10 %.4f)", name, self.step,
                             last_v)
            if restored:  # the held-out list metrics of the models saved
                held = self.evaluate_heldout()
                final["heldout_saved"] = held
            final["best"] = {n: {"step": e["best_step"], "nDCG@10": e["best"]} for n, e in validation.items()}
        if held or self.best is not None:
            self._log(final)
        if self.main:
            self.save_models(held)
        self.save_checkpoint()
        barrier()
        return TrainResult(self.step, seconds, seqs / max(seconds, 1e-9), last, held, self.out, validation)

    def save_models(self, heldout: dict[str, Any] | None = None) -> None:
        """``OUT/retriever`` and ``OUT/reranker`` with model cards, each replaced atomically."""
        from tandem.models.card import write_card

        settings = self.cfg.to_dict()
        if self.retriever is not None:
            with atomic_dir(self.out / "retriever") as tmp:
                self.retriever.save(tmp)
                metrics = {"heldout_lists": heldout.get("retriever")} if heldout else None
                write_card(tmp, "retriever", self.retriever.query_encoder.name, settings, metrics)
        if self.reranker is not None and self.train_reranker:
            self.reranker.settings.trained = True
            with atomic_dir(self.out / "reranker") as tmp:
                self.reranker.save(tmp)
                metrics = {"heldout_lists": heldout.get("reranker")} if heldout else None
                write_card(tmp, "reranker", self.reranker.name, settings, metrics, self.reranker.settings.architecture)
