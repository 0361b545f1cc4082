"""Running the recipe: :func:`run_recipe` sizes the stages to the data and the budget, then runs them in order
(:class:`_Runner`), with each trained model adopted only where it beats its start on validation."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from tandem.io import atomic_open, output_dir, read_json, write_json
from tandem.recipe.config import REPORT_MEASURES, RecipeConfig, default_rates, denoised_queries, rerank_depths
from tandem.recipe.costs import memory_plan, model_shape, plan, size_training
from tandem.recipe.report import UNTRAINED, build_report, peer_rows, render_markdown
from tandem.recipe.stages import Stages
from tandem.recipe.validation import Validation, choose_validation, eval_split_of, validation_and_share

log = logging.getLogger("tandem.recipe")


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
    out = output_dir(out, make=False)  # a file in the way fails here, before any data is loaded
    val = None
    if dry_run and cfg.plan_passages and cfg.plan_train_queries and cfg.plan_eval_queries:
        sizes = (cfg.plan_passages, cfg.plan_train_queries, cfg.plan_eval_queries,
                 min(cfg.val_max_queries, round(cfg.heldout_fraction * cfg.plan_train_queries)))  # what-if: no data
    else:
        directory = resolve_dataset(cfg.data)
        cfg = replace(cfg, eval_split=eval_split_of(cfg, directory))
        train_ds = load_beir(directory, cfg.train_split)
        test_ds = load_beir(directory, cfg.eval_split, corpus=train_ds.corpus)
        cfg, val = validation_and_share(cfg, directory, train_ds, cfg.eval_split)
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
        output_dir(out)
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
            from tandem.mining import mine

            ms = cfg.mine_settings(len(self.train_ds.qrels))
            # denoising: the lists stage mined these candidates; reused from it
            mine(self.data_dir, d / "lists.jsonl", index=out / "zs-index" / "index", reranker=reranker, settings=ms,
                 progress=self.progress, ds=self.train_ds,
                 candidates_from=out / "lists" / "lists.jsonl" if reranker is not None else None)

        extra = {"mine": cfg.mine} if cfg.mine else {}  # (without it, the keys of runs made before `mine:`)
        # the undenoised lists are keyed on the mining settings they depend on: a denoising setting changes the denoise
        # stage and what trains on it, not the lists the warm-ups train on
        from tandem.mining.settings import DENOISING_SETTINGS

        undenoised = {k: v for k, v in (cfg.mine or {}).items() if k not in DENOISING_SETTINGS}
        # (positive_ranks: the lists record where the first stage ranked each labelled positive, which
        # positive_pool=retrieved reads; runs made before mine their lists again once)
        st.run("lists", {"top_n": cfg.top_n, "positive_ranks": True, **({"mine": undenoised} if undenoised else {})},
               lists, after=("zs-index",))
        # what the re-ranker warm-up and joint training start from, and the system that stands for it
        start, start_after, start_system = self.model, (), "zero-shot"
        if cfg.retriever_warmup_steps:
            self._train("retriever-warmup", "retriever", cfg.retriever_warmup_steps, self.model, None,
                        after=("lists",))
            warm = "retriever-only" if cfg.retriever_only_row == "warmup" else "retriever-warmup"  # its row
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
            # the joint re-ranker is in use wherever either re-ranked system is adopted (the report's re-ranker)
            hybrid_adopted = self._adopt("hybrid+reranker", "joint re-ranker over the hybrid first stage")
            self.reranker_adopted = self.reranker_adopted or hybrid_adopted
        if cfg.retriever_only_row == "equal-steps":  # the joint stage's settings, the retriever's own loss alone
            self._train("retriever-alone", "retriever", cfg.joint_steps, start, None,
                        after=(lists_stage, *start_after), lists=lists_stage, shape_of="joint")
            self._index_stage("retriever-alone", "retriever-only", tq, start=start_system)
        if cfg.retriever_only_row == "steps":
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
                        fn, after=after)
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
        from tandem.mining.run import work_dir
        from tandem.models.reranker import Reranker
        from tandem.train.lexical import fit_lexical_weight
        from tandem.train.lists import first_by_hash, heldout_qids

        reranker = Reranker.from_pretrained(d / "reranker")
        if getattr(reranker, "lexical", None) != "bounded":
            return {}  # a plain cross-encoder (or a gated one saved with the raw feature) has no bounded weight
        candidates = {e["qid"]: [c["pid"] for c in sorted(e["candidates"], key=lambda c: c["rank"])]
                      for _, e in iter_jsonl(work_dir(self.out / "lists" / "lists.jsonl") / "candidates.jsonl")}
        qrels = self.train_ds.qrels
        held = heldout_qids([q for q in qrels if q in self.train_ds.queries], self.cfg.heldout_fraction,
                            self.cfg.heldout_salt)
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


    def report(self, total: float, sizing: dict[str, Any] | None = None) -> dict[str, Any]:
        return build_report(self, total, sizing)
