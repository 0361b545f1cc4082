"""The recipe's throughputs measured on this machine: a short probe at the recipe's own shapes, cached.

The time plan (:func:`tandem.recipe.plan`) turns four throughputs into seconds per stage: passages encoded,
retriever training sequences, re-ranker pairs scored and re-ranker training pairs, each a second at a
reference length (128 passage tokens; 160 for re-ranker pairs) and linear in length. Constants measured on one
CPU put the same ``budget_minutes`` at 0.6x-1.6x of its wall time on another (session 12, a 2-core Xeon with
AMX: encoding 0.36x of the plan, re-ranking 0.24-0.47x, the re-ranker warm-up 1.1-1.6x). This probe times the
same calls the stages make (the index's encoding, ``Reranker.predict``, one training step of the retriever
warm-up's shape and one of the re-ranker warm-up's, through :class:`~tandem.train.joint.Trainer`) on a few real
passages of the data, and inverts the plan's formulas, so that each stage's plan matches what was measured.
About 10-20 s on a 2-core CPU; cached per machine, software and shapes in ``$TANDEM_CACHE/rates.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

RATE_KEYS = ("encode_per_s", "train_seq_per_s", "rerank_pairs_per_s", "rerank_train_pairs_per_s")
# training settings that change what is trained on or when it is evaluated, not how fast a step runs
NOT_SPEED = frozenset({"heldout_fraction", "heldout_salt", "eval_every", "seed", "heldout_eval_lists", "max_steps",
                       "mode", "lr_retriever", "lr_reranker", "lr_head", "lr_gate", "keep_best", "keep_best_p",
                       "teacher_temperature", "positive_pool"})
PROBE_VERSION = 1  # bump when what the probe measures changes: older cached rates are then measured again


def machine() -> str:
    """The device the stages run on, as a cache key: the GPU's name, else the CPU model and thread count."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{name} threads={torch.get_num_threads()}"


def _cache_path() -> Path:
    from tandem.data.registry import cache_dir

    return cache_dir() / "rates.json"


def probe_key(cfg) -> dict[str, Any]:
    """What the measured rates depend on: the machine, the software, the precision, the models and the shapes of
    the training stages they are measured at."""
    import torch
    import transformers

    from tandem.utils import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"probe": PROBE_VERSION, "machine": machine(), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": resolve_precision(None, device),
            "model": cfg.model, "reranker": cfg.reranker or "", "max_length": cfg.max_length,
            "query_max_length": cfg.query_max_length, "reranker_max_length": cfg.reranker_max_length,
            "reranker_arch": cfg.reranker_arch,
            "stages": {s: {k: v for k, v in cfg.train_overrides("", 0, s).items() if k not in NOT_SPEED}
                       for s in ("retriever-warmup", "warmup")}}


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_rates(cfg) -> dict[str, Any] | None:
    """The cached probe for ``cfg`` on this machine (``{"rates", "key", "measured_at", "seconds"}``), or None."""
    path = _cache_path()
    try:
        entry = json.loads(path.read_text()).get(_digest(probe_key(cfg)))
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or set(RATE_KEYS) - set(entry.get("rates", {})):
        return None
    return entry


def _store(entry: dict[str, Any]) -> None:
    from tandem.io import write_json

    path = _cache_path()
    try:
        known = json.loads(path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    known[_digest(entry["key"])] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, known)
    except OSError as e:  # a read-only home: measured again next time
        log.warning("rates: could not cache the probe in %s (%s)", path, e)


def _sample(corpus, queries: Mapping[str, str], n_passages: int, n_queries: int) -> tuple[list[str], list[str]]:
    """Real texts of the data: the longest of the first passages (so that each fills the stages' lengths, as most
    passages do), and the first queries."""
    ids = list(corpus.ids[: 8 * n_passages])
    ids.sort(key=lambda pid: -len(corpus.text(pid)))
    qs = list(queries.values())[:n_queries] or ["what is measured"]
    return ids[:n_passages], (qs * n_queries)[:n_queries]


def _best_of(fn, repeats: int = 2) -> float:
    fn()  # warm: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _step_seconds(cfg, stage: str, mode: str, corpus, pids: list[str], queries: list[str], lists: int,
                  retriever, reranker, work: Path) -> tuple[float, dict[str, Any]]:
    """Seconds of one optimiser step of ``stage``'s shape with ``lists`` lists (not its full batch: steps are linear
    in lists), and the stage's training settings."""
    from tandem.train.config import load_config
    from tandem.train.joint import Trainer
    from tandem.train.lists import TrainingList

    o = {**cfg.train_overrides(mode, 2, stage), "batch_size": lists, "heldout_fraction": 0.0, "eval_every": 0,
         "keep_best": False, "save_every": 0, "fit_mixing_lists": 0, "allow_untrained_reranker": True}
    tcfg = load_config(None, o)
    size = tcfg.list_size
    # the probe's positive counts as retrieved (rank 1), so that every positive_pool setting can draw it
    training = [TrainingList(f"probe{i}", [{"pid": pids[i % len(pids)], "rank": 1}],
                             [{"pid": pids[(i + j) % len(pids)]} for j in range(1, size + 1)],
                             queries[i % len(queries)]) for i in range(lists)]
    trainer = Trainer(tcfg, corpus, {lst.qid: lst.query for lst in training}, training, work / stage,
                      retriever=retriever, reranker=reranker, progress=False)
    for m in (trainer.retriever, trainer.reranker):
        if m is not None:
            m.train(m is trainer.retriever or trainer.train_reranker)
    micro = iter(range(10**6))

    def step() -> None:
        with trainer._autocast():
            trainer.micro_step(trainer._groups(next(micro)), 1.0)
        trainer.optimizer_step()

    return _best_of(step), o


def measure_rates(cfg, corpus, queries: Mapping[str, str]) -> dict[str, float]:
    """The four throughputs of :data:`RATE_KEYS` for recipe ``cfg`` on this machine, at the plan's reference
    lengths, so that :func:`tandem.recipe.plan` gives back each probed stage's measured time."""
    import torch

    from tandem.models.encoder import Encoder
    from tandem.recipe import training_cost_factor
    from tandem.train.api import load_models
    from tandem.train.config import load_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = None if cfg.model == "default" else cfg.model
    pids, qs = _sample(corpus, queries, 48, 16)
    passages = [corpus.text(p) for p in pids]
    rates: dict[str, float] = {}
    # the index's encoder, loaded as the index stage loads it (a retriever's passage tower measured 0.6x as fast)
    encoder = Encoder.from_pretrained(model, max_length=cfg.max_length).to(device)
    n = 32
    rates["encode_per_s"] = n / _best_of(lambda: encoder.encode(passages[:n], batch_size=32)) * cfg.max_length / 128
    del encoder

    tcfg = load_config(None, cfg.train_overrides("joint", 1, "joint"))
    retriever, reranker = load_models(tcfg, model, cfg.reranker or model)
    reranker = reranker.to(device)
    pairs = [(qs[i % len(qs)], passages[i]) for i in range(n)]
    rates["rerank_pairs_per_s"] = n / _best_of(lambda: reranker.predict(pairs, batch_size=32)) \
        * cfg.reranker_max_length / 160

    with tempfile.TemporaryDirectory() as tmp:
        lists = 8
        secs, o = _step_seconds(cfg, "retriever-warmup", "retriever", corpus, pids, qs, lists, retriever, None,
                                Path(tmp))
        per_list = int(o["list_size"]) + cfg.query_max_length / cfg.max_length
        rates["train_seq_per_s"] = lists * per_list * training_cost_factor(cfg, "retriever-warmup") / secs \
            * cfg.max_length / 128
        lists = 3
        secs, o = _step_seconds(cfg, "warmup", "reranker", corpus, pids, qs, lists, None, reranker, Path(tmp))
        pairs_per_step = lists * int(o["list_size"]) * training_cost_factor(cfg, "warmup", "reranker")
        rates["rerank_train_pairs_per_s"] = pairs_per_step / secs * cfg.reranker_max_length / 160
    return {k: round(v, 2) for k, v in rates.items()}


def machine_rates(cfg, corpus, queries: Mapping[str, str], refresh: bool = False) -> dict[str, Any]:
    """``{"rates", "key", "measured_at", "seconds", "cached"}``: the cached probe for this machine and ``cfg``, or
    a new one (then cached). ``$TANDEM_RATES_REFRESH=1`` (or ``refresh``) measures again."""
    if not refresh and os.environ.get("TANDEM_RATES_REFRESH") != "1":
        entry = cached_rates(cfg)
        if entry is not None:
            return {**entry, "cached": True}
    log.info("measuring this machine's throughputs at the recipe's shapes (a short probe, cached after)")
    t = time.perf_counter()
    rates = measure_rates(cfg, corpus, queries)
    entry = {"rates": rates, "key": probe_key(cfg), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "seconds": round(time.perf_counter() - t, 1)}
    _store(entry)
    log.info("measured rates in %.1f s: %s", entry["seconds"], rates)
    return {**entry, "cached": False}


DRIFT_LIMIT = 1.5  # a run this far off its plan, either way, measures the machine's rates again next time


def forget_rates(cfg) -> bool:
    """Drop the cached probe for ``cfg`` on this machine (the next run measures again); whether there was one."""
    path = _cache_path()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(known, dict) or known.pop(_digest(probe_key(cfg)), None) is None:
        return False
    from tandem.io import write_json

    try:
        write_json(path, known)
    except OSError as e:
        log.warning("rates: could not update %s (%s)", path, e)
        return False
    return True


def plan_drift(seconds: Mapping[str, float], planned: Mapping[str, float], min_seconds: float = 10.0) \
        -> dict[str, Any] | None:
    """How far the stages that ran took from their plan: ``{"ratio": measured / planned seconds, summed over the
    stages that ran and were planned at ``min_seconds`` or more, "stages": how many}``; None where none qualify
    (every stage cached, or all of them short)."""
    names = [n for n in seconds if planned.get(n, 0.0) >= min_seconds]
    if not names:
        return None
    ratio = sum(seconds[n] for n in names) / sum(planned[n] for n in names)
    return {"ratio": round(ratio, 3), "stages": len(names)}


def check_plan(cfg, seconds: Mapping[str, float], planned: Mapping[str, float],
               limit: float = DRIFT_LIMIT) -> dict[str, Any] | None:
    """After a run planned on measured rates: where its stages took more than ``limit`` times their plan, or less
    than 1 / ``limit`` of it (a probe measured while the CPU was busy caches rates 3-10x too slow; one measured
    on an idle machine is too fast for a busy one), the cached probe is dropped, so the next run measures again.
    Returns the drift with ``"reprobe"`` (whether it was dropped), or None where no stage ran long enough."""
    drift = plan_drift(seconds, planned)
    if drift is None:
        return None
    off = not (1 / limit <= drift["ratio"] <= limit)
    drift["reprobe"] = bool(off and forget_rates(cfg))
    if off:
        log.warning("rates: the stages took %.2fx their planned time (outside 1/%s..%s): %s", drift["ratio"], limit,
                    limit, "the next run measures this machine's rates again" if drift["reprobe"]
                    else "no cached probe to drop")
    return drift


__all__ = ["RATE_KEYS", "DRIFT_LIMIT", "machine", "probe_key", "cached_rates", "measure_rates", "machine_rates",
           "forget_rates", "plan_drift", "check_plan"]
