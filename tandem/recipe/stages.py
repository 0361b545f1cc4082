"""The recipe's stages: one table of what each stage is (what it needs, when it runs, what it costs in time and
memory, whether it trains), from which the plan, the memory plan, the order, the report's wall time per system and
the curves are derived; and :class:`Stages`, which runs a named stage once and skips it when done with the same
settings.

Adding a stage: a :class:`Stage` row here (in the order the stages run), its estimate on
:class:`tandem.recipe.costs.Cost` (and memory on :class:`tandem.recipe.costs.Memory`), then its ``Stages.run`` call in
:mod:`tandem.recipe.run`; :meth:`Stages.run` refuses a stage the table does not name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tandem.io import manifest, read_json, write_json

log = logging.getLogger("tandem.recipe")


def _always(cfg) -> bool:
    return True


def _retriever_warmup(cfg) -> bool:
    return bool(cfg.retriever_warmup_steps)


def _lists_of_joint(cfg) -> str:
    """The stage whose lists the joint stage (and the retriever-alone baselines) train on."""
    return "denoise" if cfg.denoise else "lists"


@dataclass(frozen=True)
class Stage:
    """One stage of the recipe.

    ``needs(cfg)``: the stages whose outputs (or decisions) it uses, for the wall time of the systems it yields;
    ``when(cfg)``: whether the recipe runs it; ``seconds(cost)`` / ``memory(mem)``: its estimated time and peak
    memory (``memory`` None: no model of its own, not in the memory plan); ``training``: a training stage (runs on
    every process under torchrun; its ``metrics.jsonl`` becomes a report curve); ``planned(cost)``: whether the plan
    counts it for this data (default: ``when``).
    """

    name: str
    needs: Callable[[Any], tuple[str, ...]]
    seconds: Callable[[Any], float]
    memory: Callable[[Any], float] | None = None
    when: Callable[[Any], bool] = _always
    training: bool = False
    planned: Callable[[Any], bool] | None = None


def _fixed(*names: str) -> Callable[[Any], tuple[str, ...]]:
    return lambda cfg: names


STAGES: tuple[Stage, ...] = (  # in the order they run
    Stage("bm25", _fixed(), lambda c: c.bm25()),
    Stage("zs-index", _fixed(), lambda c: c.index(), lambda m: m.index()),
    Stage("zero-shot", _fixed("zs-index"), lambda c: c.search()),
    Stage("hybrid-zero-shot", _fixed("bm25", "zero-shot"), lambda c: c.fuse()),
    Stage("lists", _fixed("zs-index"), lambda c: c.lists()),
    Stage("retriever-warmup", _fixed("lists"), lambda c: c.retriever_warmup(), lambda m: m.retriever_warmup(),
          when=_retriever_warmup, training=True),
    Stage("retriever-warmup-index", _fixed("retriever-warmup"), lambda c: c.index(), lambda m: m.index(),
          when=_retriever_warmup),
    Stage("warmup", _fixed("lists", "retriever-warmup-index"), lambda c: c.warmup(), lambda m: m.warmup(),
          training=True),
    Stage("denoise", _fixed("zs-index", "warmup"), lambda c: c.denoise(), lambda m: m.inference(),
          when=lambda cfg: cfg.denoise),
    Stage("joint", lambda cfg: (_lists_of_joint(cfg), "warmup", "retriever-warmup-index"), lambda c: c.joint(),
          lambda m: m.joint(), training=True),
    Stage("joint-index", _fixed("joint"), lambda c: c.index(), lambda m: m.index()),
    Stage("hybrid", _fixed("bm25", "joint-index"), lambda c: c.fuse(), when=lambda cfg: cfg.hybrid),
    Stage("val-rerank", _fixed("joint-index"), lambda c: c.val_rerank(), lambda m: m.inference(),
          planned=lambda c: bool(c.n_val)),
    Stage("rerank", lambda cfg: ("joint-index", "val-rerank", *(("hybrid",) if cfg.hybrid and cfg.hybrid_rerank
                                                               else ())),
          lambda c: c.rerank(), lambda m: m.inference()),
    Stage("retriever-alone", lambda cfg: (_lists_of_joint(cfg), "retriever-warmup-index"),
          lambda c: c.retriever_alone(), lambda m: m.retriever_alone(),
          when=lambda cfg: cfg.retriever_only_row == "equal-steps", training=True),
    Stage("retriever-alone-index", _fixed("retriever-alone"), lambda c: c.index(), lambda m: m.index(),
          when=lambda cfg: cfg.retriever_only_row == "equal-steps"),
    Stage("retriever-only", lambda cfg: (_lists_of_joint(cfg),), lambda c: c.retriever_only(),
          lambda m: m.retriever_only(), when=lambda cfg: cfg.retriever_only_row == "steps", training=True),
    Stage("retriever-only-index", _fixed("retriever-only"), lambda c: c.index(), lambda m: m.index(),
          when=lambda cfg: cfg.retriever_only_row == "steps"),
)
STAGE = {s.name: s for s in STAGES}
STAGE_ORDER = [s.name for s in STAGES]
TRAINING_STAGES = tuple(s.name for s in STAGES if s.training)


def chain(cfg, stage: str) -> list[str]:
    """``stage`` and every stage it needs, transitively (in run order): what a system yielded by it cost."""
    seen: set[str] = set()
    todo = [stage]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(STAGE[name].needs(cfg))
    return [n for n in STAGE_ORDER if n in seen]


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

    def run(self, name: str, settings: dict[str, Any], fn: Callable[[Path], None], after: tuple[str, ...] = ()) \
            -> Path:
        """Run ``fn(stage_dir)`` unless done with the same settings and the same upstream stages ``after`` (their
        keys join this stage's).

        ``name`` must be a row of :data:`STAGES`. Under torchrun its training stages run on all processes, the
        others on rank 0 while the rest wait; rank 0 alone writes the stage records.
        """
        from tandem.train.distributed import barrier

        if name not in STAGE:
            raise KeyError(f"stage {name!r} is not in the recipe's stage table (tandem.recipe.stages.STAGES)")
        every_rank = STAGE[name].training
        barrier()
        key_src = json.dumps({"settings": self._portable(settings), "after": [self.keys[a] for a in after],
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


    def _portable(self, value: Any) -> Any:
        """``value`` with the paths inside this run written relative to it (``$RUN/joint/retriever``): a stage's
        key then survives copying or moving the run directory, so the copy resumes where the run stood instead of
        retraining from the first stage whose settings name a model inside the run."""
        if isinstance(value, dict):
            return {k: self._portable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._portable(v) for v in value]
        if isinstance(value, (str, Path)):
            text = str(value)
            for root in {str(self.out), str(self.out.resolve())}:
                if text == root or text.startswith(root + os.sep):
                    return "$RUN" + text[len(root):]
            return text
        return value


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
