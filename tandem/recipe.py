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
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from tandem.errors import ConfigError, TandemError
from tandem.io import atomic_open, manifest, read_json, write_json
from tandem.settings import setting as _f

log = logging.getLogger(__name__)

REPORT_MEASURES = ("nDCG@10", "RR@10", "R@100")
CONFIG_DIR = Path(__file__).parent / "configs"

# Throughputs measured on the 2-core CPU box (BENCHMARKS.md), at 128 passage tokens; used by --dry-run.
CPU_RATES = {"encode_per_s": 60.0, "train_seq_per_s": 11.0, "rerank_pairs_per_s": 40.0}
# the same CPU in bf16 (precision auto on a CPU with AVX-512 BF16): the demo's stages, 2026-11-26
CPU_RATES_BF16 = {"encode_per_s": 110.0, "train_seq_per_s": 16.0, "rerank_pairs_per_s": 62.0}
HYBRID_EXTRA_PAIRS = 1.45


def default_rates() -> dict[str, float]:
    """This project's 2-core CPU rates at the precision this process would use on a CPU."""
    from tandem.utils import resolve_precision

    return dict(CPU_RATES_BF16 if resolve_precision(None, "cpu") == "bf16" else CPU_RATES)


@dataclass(frozen=True)
class RecipeConfig:
    data: str = _f("scifact", "dataset name or directory (BEIR, or MS MARCO passage files)")
    train_split: str = _f("train", "qrels split of the training queries")
    eval_split: str = _f("test", "qrels split the report evaluates on (MS MARCO: dev)")
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
    low: float = _f(0.1, "denoising: calibrated probability below which a candidate is a clean negative")
    high: float = _f(0.9, "denoising: probability above which a candidate becomes a pseudo-positive")
    low_from_positives: float = _f(0.0, "denoising, if > 0: low = this quantile of the held-out labelled positives' "
                                        "probabilities (chosen on held-out queries instead of fixed)")
    reranker_arch: str = _f("gated", "re-ranker built on the body: gated (cold-start safe) or cross")
    rerank_k: int = _f(20, "candidates the joint re-ranker re-scores per test query")
    hybrid: bool = _f(True, "also report the hybrid first stage: BM25 + joint retriever, reciprocal rank fusion")
    hybrid_rerank: bool = _f(True, "with hybrid: also re-rank the hybrid top rerank_k with the joint re-ranker "
                                   "(pairs shared with the dense top-k are scored once; ~45% more pairs)")
    seed: int = _f(1, "seed of training")
    heldout_fraction: float = _f(0.1, "training lists held out for the curves and the kl_gate")
    eval_every: int = _f(10, "held-out evaluation every N steps")
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
    rates: dict = _f(None, "--dry-run cost model: measured throughputs of ONE device (encode_per_s at 128 passage "
                           "tokens, train_seq_per_s at 128 tokens, rerank_pairs_per_s at 160 tokens); default: "
                           "this project's 2-core CPU")

    def train_overrides(self, mode: str, steps: int, stage: str = "") -> dict[str, Any]:
        """The training settings of a stage: the recipe's, then ``train``, then the stage's own."""
        own = {"retriever-warmup": self.retriever_warmup_train, "warmup": self.warmup_train,
               "joint": self.joint_train}.get(stage) or {}
        return {"mode": mode, "max_steps": steps, "list_size": self.list_size, "batch_size": self.batch_size,
                "query_max_length": self.query_max_length, "passage_max_length": self.max_length,
                "reranker_max_length": self.reranker_max_length, "seed": self.seed,
                "heldout_fraction": self.heldout_fraction, "eval_every": self.eval_every,
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
        raise TandemError(f"no shipped config {name!r}; available: {sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))}")
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
        self.keys: dict[str, str] = {}
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
        if main or every_rank:
            from tandem.utils import progress_context

            with progress_context(label):
                fn(stage_dir)
        self.seconds[name] = time.perf_counter() - t0
        if main:
            write_json(done, manifest("stage", name=name, key=key, settings=settings, seconds=self.seconds[name]))
            log.info("stage %-16s done in %.0fs", name, self.seconds[name])
        barrier()
        return stage_dir


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan(cfg: RecipeConfig, n_passages: int, n_train: int, n_test: int) -> dict[str, float]:
    """Estimated seconds per stage from measured throughputs (``cfg.rates`` or this CPU's), scaled by length.

    Encoding, re-ranking and attention costs are taken as linear in length (a slight underestimate
    for long inputs); training and encoding stages are divided over ``cfg.devices``.
    """
    rates = {**default_rates(), **(cfg.rates or {})}
    dev = max(1, cfg.devices)
    enc = rates["encode_per_s"] * 128 / cfg.max_length * dev
    seq = rates["train_seq_per_s"] * 128 / cfg.max_length * dev
    pairs = rates["rerank_pairs_per_s"] * 160 / cfg.reranker_max_length * dev
    (wb, wl), (jb, jl) = cfg.stage_shape("warmup"), cfg.stage_shape("joint")
    queries = enc * cfg.max_length / cfg.query_max_length  # queries/s: short texts
    est = {"bm25": 5.0 + n_passages / 20_000, "zs-index": n_passages / enc + 10, "zero-shot": n_test / queries + 5,
           "lists": n_train / queries + 5,
           "warmup": cfg.warmup_steps * wb * wl / seq + 30,
           "denoise": (n_train * ((cfg.denoise_top or cfg.top_n) + 0.15) / pairs + 10) if cfg.denoise else 0.0,
           "joint": cfg.joint_steps * jb * (2 * jl + 1) / seq + 30,
           "joint-index": n_passages / enc + 10,
           # hybrid: the fused top-k adds ~45% new pairs to the dense top-k (measured on SciFact, k = 20)
           "rerank": n_test * cfg.rerank_k * (HYBRID_EXTRA_PAIRS if cfg.hybrid and cfg.hybrid_rerank else 1.0) / pairs
           + 5}
    if cfg.hybrid:
        est["hybrid"] = 2.0 + n_test / 1000

    def retriever_alone(steps: int, lists_per_step: int, list_size: int) -> float:
        """Seconds of retriever-only training: a query costs query_max_length / max_length of a passage."""
        return steps * lists_per_step * (list_size + cfg.query_max_length / cfg.max_length) / seq + 20

    if cfg.retriever_warmup_steps:
        est["retriever-warmup"] = retriever_alone(cfg.retriever_warmup_steps, *cfg.stage_shape("retriever-warmup"))
    if cfg.retriever_only == "steps":
        est["retriever-only"] = cfg.retriever_only_steps * cfg.batch_size * (cfg.list_size + 1) / seq + n_passages / enc
    elif cfg.retriever_only == "equal-steps":  # the joint stage's retriever half, then an index
        est["retriever-alone"] = retriever_alone(cfg.joint_steps, jb, jl)
        est["retriever-alone-index"] = n_passages / enc + 10
    elif cfg.retriever_only == "warmup":
        est["retriever-warmup-index"] = n_passages / enc + 10
    order = ["bm25", "zs-index", "zero-shot", "lists", "retriever-warmup", "warmup", "denoise", "joint",
             "joint-index", "hybrid", "rerank", "retriever-warmup-index", "retriever-alone", "retriever-alone-index",
             "retriever-only"]  # as they run
    return {k: est[k] for k in sorted(est, key=lambda k: order.index(k) if k in order else len(order))}


def model_shape(model: str | None) -> dict[str, int]:
    """hidden size, layers, heads and parameter count of an encoder, from its config (no weights loaded)."""
    from transformers import AutoConfig

    from tandem.models.hf import resolve_model

    c = AutoConfig.from_pretrained(resolve_model(model))
    h, layers, heads = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
    inter = getattr(c, "intermediate_size", 4 * h)
    params = c.vocab_size * h + getattr(c, "max_position_embeddings", 512) * h + layers * (4 * h * h + 2 * h * inter)
    return {"hidden": h, "layers": layers, "heads": heads, "params": int(params)}


def memory_plan(cfg: RecipeConfig, n_passages: int, shape: dict[str, int], gpu: bool) -> dict[str, float]:
    """Estimated peak memory (bytes) per stage on one device.

    Training: each trained model's weights, gradients and AdamW moments (16 bytes a parameter) plus
    activations of the sequences alive at once (a micro-batch, or ``chunk_size`` with gradient
    caching) at ``34 h + 5 a s`` bytes per token and layer in 16-bit (Korthikanti et al. 2022), twice
    that in fp32 on CPU. Indexing: the fp32 vectors of the corpus (a flat index holds them all).
    """
    h, layers, heads, params = shape["hidden"], shape["layers"], shape["heads"], shape["params"]
    per_token_layer = (34 * h + 5 * heads * cfg.max_length) * (1 if gpu else 2)

    def acts(stage: str, seqs_per_list: int, length: int) -> float:
        o = cfg.train_overrides("", 0, stage)
        chunk = int(o.get("chunk_size", 0) or 0)
        batch = max(1, int(o["batch_size"]) // max(1, cfg.devices))
        seqs = batch * (int(o["list_size"]) + seqs_per_list)
        live = min(seqs, chunk) if chunk else seqs
        return live * length * layers * per_token_layer

    states = 16.0 * params
    joint = 2 * states + max(acts("joint", 1, cfg.max_length), acts("joint", 0, cfg.reranker_max_length))
    vectors = 4.0 * n_passages * h
    return {"warmup": states + acts("warmup", 0, cfg.reranker_max_length), "joint": joint,
            "zs-index": vectors + 4 * params, "joint-index": vectors + 4 * params, "denoise": 4 * params,
            "rerank": 4 * params, **({"retriever-only": states + acts("", 1, cfg.max_length)}
                                     if cfg.retriever_only == "steps" else {}),
            **({"retriever-alone": states + acts("joint", 1, cfg.max_length)}
               if cfg.retriever_only == "equal-steps" else {}),
            **({"retriever-warmup": states + acts("retriever-warmup", 1, cfg.max_length)}
               if cfg.retriever_warmup_steps else {})}


def run_recipe(cfg: RecipeConfig, out: str | Path, progress: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """Run (or, with ``dry_run``, only plan) the recipe; returns the report (or the plan)."""
    from tandem.data import load_beir, resolve_dataset
    from tandem.train.distributed import world

    t_start = time.perf_counter()
    out = Path(out)
    if dry_run and cfg.plan_passages and cfg.plan_train_queries and cfg.plan_eval_queries:
        sizes = (cfg.plan_passages, cfg.plan_train_queries, cfg.plan_eval_queries)  # what-if: no data needed
    else:
        directory = resolve_dataset(cfg.data)
        train_ds = load_beir(directory, cfg.train_split)
        test_ds = load_beir(directory, cfg.eval_split, corpus=train_ds.corpus)
        sizes = (cfg.plan_passages or len(train_ds.corpus), cfg.plan_train_queries or len(train_ds.qrels),
                 cfg.plan_eval_queries or len(test_ds.qrels))
    estimate = plan(cfg, *sizes)
    if dry_run:
        import torch

        gpu = torch.cuda.is_available() or bool(cfg.rates)
        memory = memory_plan(cfg, sizes[0], model_shape(None if cfg.model == "default" else cfg.model), gpu)
        return {"plan_seconds": estimate, "plan_memory_bytes": memory, "total_seconds": sum(estimate.values()),
                "devices": cfg.devices, "rates": {**default_rates(), **(cfg.rates or {})}, "measured_here": not cfg.rates}
    rank, _, _ = world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "recipe.json", {**asdict(cfg), "data_dir": str(directory)})
    stages = Stages(out, estimate, rank)
    runner = _Runner(cfg, out, train_ds, test_ds, stages, progress)
    runner.run_all(str(directory.resolve()))
    if rank != 0:
        return {}
    report = runner.report(time.perf_counter() - t_start)
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
                     progress: bool = False) -> None:
    """Index ``corpus`` with a trained retriever's passage tower under ``d/index`` and write its top-1000 for
    ``queries`` to ``d/run.trec``."""
    from tandem.data import write_run
    from tandem.index.dense import build_index, dense_search, load_index_and_encoder
    from tandem.models.retriever import Retriever

    r = Retriever.from_pretrained(retriever_dir)
    build_index(corpus, d / "index", r.passage_tower(), progress=progress, corpus_file=corpus_file)
    index, enc = load_index_and_encoder(d / "index")
    write_run(d / "run.trec", dense_search(index, enc, queries, 1000, progress=progress))


class _Runner:
    def __init__(self, cfg, out, train_ds, test_ds, stages, progress):
        self.cfg, self.out, self.train_ds, self.test_ds = cfg, out, train_ds, test_ds
        self.stages, self.progress = stages, progress
        self._scores: dict[str, dict[str, float]] = {}  # run file -> test metrics, evaluated once
        self.model = None if cfg.model == "default" else cfg.model

    def run_all(self, data_key: str) -> None:
        self.data_dir = data_key
        from tandem.data import write_run
        from tandem.index.bm25 import BM25
        from tandem.index.dense import build_index, dense_search, load_index_and_encoder
        from tandem.models.encoder import Encoder

        cfg, st, out = self.cfg, self.stages, self.out
        tq = self.test_ds.split_queries()
        st.run("bm25", {"data": data_key}, lambda d: write_run(
            d / "run.trec", BM25(self.train_ds.corpus, progress=self.progress).search(tq, 1000)))
        self._headline("bm25", "bm25/run.trec")
        from tandem.data.beir import corpus_file

        # the indexes record their corpus file, so `tandem serve INDEX --reranker ...` finds the texts
        self.corpus_file = str(corpus_file(Path(data_key)))
        st.run("zs-index", {"data": data_key, "model": cfg.model, "max_length": cfg.max_length}, lambda d: build_index(
            self.train_ds.corpus, d / "index", Encoder.from_pretrained(self.model, max_length=cfg.max_length),
            progress=self.progress, corpus_file=self.corpus_file), after=())

        def zero_shot(d: Path) -> None:
            index, enc = load_index_and_encoder(out / "zs-index" / "index")
            write_run(d / "run.trec", dense_search(index, enc, tq, 1000, progress=self.progress))

        st.run("zero-shot", {}, zero_shot, after=("zs-index",))
        self._headline("zero-shot", "zero-shot/run.trec")

        def lists(d: Path, reranker: str | None = None) -> None:
            from tandem.mine import MineSettings, mine

            ms = MineSettings(top_n=cfg.top_n, low=cfg.low, high=cfg.high, denoise_top=cfg.denoise_top,
                              split=cfg.train_split, low_from_positives=cfg.low_from_positives)
            if reranker is not None:  # denoising: the lists stage mined these candidates; resume from them
                work = d / "lists.mine"
                work.mkdir(parents=True, exist_ok=True)
                for name in ("candidates.jsonl", "manifest.json"):
                    shutil.copy2(out / "lists" / "lists.mine" / name, work / name)
            mine(self.data_dir, d / "lists.jsonl", index=out / "zs-index" / "index", reranker=reranker, settings=ms,
                 progress=self.progress, ds=self.train_ds)

        st.run("lists", {"top_n": cfg.top_n}, lists, after=("zs-index",))
        start, start_after = self.model, ()  # what the re-ranker warm-up and joint training start from
        if cfg.retriever_warmup_steps:
            self._train("retriever-warmup", "retriever", cfg.retriever_warmup_steps, self.model, None,
                        after=("lists",))
            start, start_after = str(out / "retriever-warmup" / "retriever"), ("retriever-warmup",)
        self._train("warmup", "reranker", cfg.warmup_steps, None, start, after=("lists", *start_after))
        lists_stage = "lists"
        if cfg.denoise:
            lists_stage = "denoise"
            st.run("denoise", {"top_n": cfg.top_n, "denoise_top": cfg.denoise_top, "low": cfg.low, "high": cfg.high,
                               "low_from_positives": cfg.low_from_positives},
                   lambda d: lists(d, str(out / "warmup" / "reranker")), after=("zs-index", "warmup"))
        self._train("joint", "joint", cfg.joint_steps, start, str(out / "warmup" / "reranker"),
                    after=(lists_stage, "warmup", *start_after), lists=lists_stage)

        self._index_stage("joint", "joint-retriever", tq)

        def hybrid(d: Path) -> None:
            from tandem.data import read_run
            from tandem.index.fusion import fuse_runs

            runs = [read_run(out / "bm25" / "run.trec"), read_run(out / "joint-index" / "run.trec")]
            write_run(d / "run.trec", fuse_runs(runs, top=1000))

        if cfg.hybrid:
            st.run("hybrid", {}, hybrid, after=("bm25", "joint-index"))
            self._headline("hybrid", "hybrid/run.trec")
        both = cfg.hybrid and cfg.hybrid_rerank  # the hybrid top-k is re-ranked too

        def rerank_stage(d: Path) -> None:
            from tandem.data import read_run
            from tandem.models.reranker import Reranker
            from tandem.rerank import rerank

            ce = Reranker.from_pretrained(out / "joint" / "reranker")
            cache: dict = {}  # (qid, pid) -> score: the dense and hybrid top-k overlap
            for first, name in [("joint-index", "run.trec")] + ([("hybrid", "hybrid.trec")] if both else []):
                write_run(d / name, rerank(read_run(out / first / "run.trec"), self.test_ds.queries,
                                           self.test_ds.corpus, ce, cfg.rerank_k, progress=self.progress,
                                           cache=cache))

        st.run("rerank", {"k": cfg.rerank_k, "hybrid": both}, rerank_stage,
               after=("joint-index", "hybrid") if both else ("joint-index",))
        self._headline("joint-retriever+reranker", "rerank/run.trec")
        if both:
            self._headline("hybrid+reranker", "rerank/hybrid.trec")
        if cfg.retriever_only == "warmup":  # last: the main systems are done if the budget runs out
            self._index_stage("retriever-warmup", "retriever-only", tq)
        if cfg.retriever_only == "equal-steps":  # the joint stage's settings, the retriever's own loss alone
            self._train("retriever-alone", "retriever", cfg.joint_steps, str(out / "retriever-warmup" / "retriever"),
                        None, after=(lists_stage, "retriever-warmup"), lists=lists_stage, shape_of="joint")
            self._index_stage("retriever-alone", "retriever-only", tq)
        if cfg.retriever_only == "steps":
            self._train("retriever-only", "retriever", cfg.retriever_only_steps, self.model, None,
                        after=(lists_stage, "warmup") if cfg.denoise else ("lists",), lists=lists_stage)
            self._index_stage("retriever-only", "retriever-only", tq)

    def _evaluate(self, run_file: str) -> dict[str, float]:
        """Test metrics of a run file under ``out`` (each file is read and scored once per invocation)."""
        if run_file not in self._scores:
            from tandem.data import read_run
            from tandem.eval.metrics import evaluate

            self._scores[run_file] = evaluate(read_run(self.out / run_file), self.test_ds.qrels, REPORT_MEASURES)
        return self._scores[run_file]

    def _headline(self, system: str, run_file: str) -> None:
        """Log a finished system's test metrics at once, so a run cut short still says where it stands."""
        if self.stages.rank != 0 or not (self.out / run_file).exists():
            return
        m = self._evaluate(run_file)
        log.info("%-24s %s on %s", system, "  ".join(f"{k} {v:.4f}" for k, v in m.items()), self.cfg.eval_split)

    def _index_stage(self, trained: str, system: str, queries) -> None:
        """Stage ``<trained>-index``: the corpus indexed with the retriever that stage ``trained`` wrote, and its
        test run, logged as ``system``."""
        self.stages.run(f"{trained}-index", {},
                        lambda d: index_and_search(self.out / trained / "retriever", d, self.train_ds.corpus, queries,
                                                   self.corpus_file, self.progress),
                        after=(trained,))
        self._headline(system, f"{trained}-index/run.trec")

    def _train(self, name: str, mode: str, steps: int, retriever, reranker, after, lists: str = "lists",
               shape_of: str = "") -> None:
        """A training stage; ``shape_of`` takes another stage's own settings (``joint``: its lists, batch, loss
        options) in place of this one's."""
        from tandem.train import train

        overrides = self.cfg.train_overrides(mode, steps, shape_of or name)

        def fn(d: Path) -> None:
            result = train(self.data_dir, d, lists=self.out / lists / "lists.jsonl",
                           retriever=retriever, reranker=reranker, overrides=overrides, resume=True,
                           progress=self.progress)
            if self.stages.rank == 0:
                write_json(d / "result.json", {"steps": result.steps, "seconds": result.seconds,
                                               "sequences_per_s": result.sequences_per_s, "heldout": result.heldout,
                                               "final_losses": result.final_losses})

        # subtle: a killed training stage has no done.json but keeps its checkpoints; train(resume=True) continues
        self.stages.run(name, {"mode": mode, "overrides": overrides, "retriever": retriever, "reranker": reranker,
                               "lists": lists},
                        fn, after=after, every_rank=True)

    def report(self, total: float) -> dict[str, Any]:
        s = self.stages.seconds
        lists = ["lists", "warmup", "denoise"] if self.cfg.denoise else ["lists"]
        joint = ["zs-index", *lists, "retriever-warmup", "warmup", "joint", "joint-index"]
        chains = {
            "bm25": ("bm25/run.trec", ["bm25"]),
            "zero-shot": ("zero-shot/run.trec", ["zs-index", "zero-shot"]),
            "joint-retriever": ("joint-index/run.trec", joint),
            "joint-retriever+reranker": ("rerank/run.trec", [*joint, "rerank"]),
        }
        if self.cfg.hybrid:
            chains["hybrid"] = ("hybrid/run.trec", ["bm25", *joint, "hybrid"])
            if self.cfg.hybrid_rerank:
                chains["hybrid+reranker"] = ("rerank/hybrid.trec", ["bm25", *joint, "hybrid", "rerank"])
        source = self.cfg.retriever_only
        if source == "steps":
            chains["retriever-only"] = ("retriever-only-index/run.trec",
                                        ["zs-index", *lists, "retriever-only", "retriever-only-index"])
        elif source == "equal-steps":
            chains["retriever-only"] = ("retriever-alone-index/run.trec",
                                        ["zs-index", *lists, "retriever-warmup", "retriever-alone",
                                         "retriever-alone-index"])
        elif source == "warmup":
            chains["retriever-only"] = ("retriever-warmup-index/run.trec",
                                        ["zs-index", "lists", "retriever-warmup", "retriever-warmup-index"])
        systems = {}
        for name, (run_file, parts) in chains.items():
            systems[name] = {**self._evaluate(run_file), "seconds": sum(s.get(p, 0.0) for p in dict.fromkeys(parts)),
                             "run": str(self.out / run_file)}
        systems.update(peer_rows(self.cfg.peers))
        curves = {}
        for stage in ("retriever-warmup", "warmup", "joint", "retriever-only", "retriever-alone"):
            path = self.out / stage / "metrics.jsonl"
            if path.exists():
                curves[stage] = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        # total_seconds: what the whole pipeline cost (a cached stage counts its original run);
        # wall_seconds: this invocation alone
        return {"data": str(self.cfg.data), "split": self.cfg.eval_split, "queries": len(self.test_ds.qrels),
                "config": asdict(self.cfg), "systems": systems, "stage_seconds": s,
                "total_seconds": max(total, sum(s.values())), "wall_seconds": total,
                "models": {"retriever": str(self.out / "joint" / "retriever"),
                           "reranker": str(self.out / "joint" / "reranker")},
                "curves": curves}


def peer_rows(path: str) -> dict[str, dict]:
    """The systems of a peers benchmark result (``benchmarks/peers_scifact.py``) as report rows named
    ``peer:NAME``, with their training seconds; none when no file is named."""
    if not path:
        return {}
    if not Path(path).exists():
        raise ConfigError(f"peers: {path} does not exist (write it with benchmarks/peers_scifact.py --out DIR)")
    rows = {}
    for name, vals in read_json(path).get("systems", {}).items():
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
        "steps": f" `retriever-only`: the retriever trained alone on the joint lists ({cfg.get('retriever_only_steps')} "
                 "steps).",
        "equal-steps": f" `retriever-only`: the retriever warm-up ({warm} steps) continued alone for the joint "
                       f"stage's {joint} steps on the joint's lists and settings (its own listwise CE in place of CE + "
                       "KL): the joint retriever's budget, step for step.",
        "warmup": f" `retriever-only`: the retriever warm-up ({warm} steps, trained alone), from which joint training "
                  f"starts; the joint retriever has trained {joint} steps more, so this is not an equal-budget "
                  "baseline (`retriever_only_equal_steps=true` adds one).",
    }.get(source, "")


def render_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [f"# tandem report: {Path(str(report['data'])).name} ({report['split']}, {report['queries']} queries)", "",
             "| system | " + " | ".join(REPORT_MEASURES) + " | seconds |",
             "|---" * (len(REPORT_MEASURES) + 2) + "|"]
    for name, vals in report["systems"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(vals.get(m)) for m in REPORT_MEASURES)
                     + f" | {vals['seconds']:.0f} |")
    lines += ["", "`seconds`: wall time of the stages that system needs (cached stages count their first run)"
              + ("; `peer:` rows: sentence-transformers trained by benchmarks/peers_scifact.py on the same machine "
                 "and data, seconds of training." if any(v.get("peer") for v in report["systems"].values()) else "."),
              "",
              "## Settings", "",
              f"Passages {cfg['max_length']} tokens, queries {cfg['query_max_length']}, re-ranker pairs "
              f"{cfg['reranker_max_length']}; lists of {cfg['list_size']} from the zero-shot top-{cfg['top_n']}, "
              f"{cfg['batch_size']} lists per step; re-ranker warm-up {cfg['warmup_steps']} steps "
              f"({cfg['reranker_arch']} architecture), joint training {cfg['joint_steps']} steps; the joint "
              f"re-ranker re-scores the joint retriever's top-{cfg['rerank_k']}"
              + (f" and the hybrid first stage's (BM25 + joint retriever, reciprocal rank fusion, k = 60) top-"
                 f"{cfg['rerank_k']}." if cfg.get("hybrid") and cfg.get("hybrid_rerank") else ".")
              + (" `hybrid`: BM25 and the joint retriever fused by reciprocal rank fusion (k = 60)."
                 if cfg.get("hybrid") else "")
              + (f" Hybrid lists: the warmed-up re-ranker scored each training query's first {cfg['denoise_top'] or cfg['top_n']} "
                 + (f"candidates; below the {100 * cfg['low_from_positives']:.0f}% quantile of the held-out "
                    "positives' probabilities (the value is in the mining report)" if cfg.get("low_from_positives")
                    else f"candidates; below p = {cfg['low']}")
                 + f" they form the denoised pool, above {cfg['high']} they become "
                 "pseudo-positives (mining report: `denoise/lists.report.md`)." if cfg.get("denoise") else "")
              + _retriever_only_sentence(cfg), "",
              "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in report["stage_seconds"].items()]
    lines += ["", f"Total wall time: {report['total_seconds']:.0f} s.", "",
              f"Models: `{report['models']['retriever']}`, `{report['models']['reranker']}`.", "",
              "Plots: `systems.png`, `losses.png`, `heldout.png`.", ""]
    return "\n".join(lines)
