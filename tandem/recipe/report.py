"""The recipe's report: report.json from a finished run (:func:`build_report`) and report.md from it
(:func:`render_markdown`)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError, DataFormatError
from tandem.io import read_json
from tandem.recipe.config import REPORT_MEASURES, RecipeConfig
from tandem.recipe.stages import TRAINING_STAGES, chain

# The report's systems that no training produced: the starting points trained systems must beat.
UNTRAINED = ("bm25", "zero-shot", "hybrid-zero-shot")


def choose_served(systems: dict[str, dict[str, Any]], beats, adopt_p: float, val_why: str = "") -> tuple[str, str]:
    """The system the recipe stands behind, and why: the best on validation (never on test; training-free on a
    tie) among the systems in use: a trained system that validation did not adopt over its start (``adopted``
    False: the run kept the start) is not served, whatever its mean. A trained system must also beat the best
    training-free one (``beats(a, b)`` -> (verdict, a's mean, b's mean, p)), as any model its start."""
    order = list(systems)
    eligible = [n for n in order if systems[n].get("adopted") is not False]
    chosen = max(eligible, key=lambda n: (systems[n]["val"]["nDCG@10"], -order.index(n)))
    why = f"best validation nDCG@10 ({systems[chosen]['val']['nDCG@10']:.4f}{', ' + val_why if val_why else ''})"
    passed = [n for n in order if systems[n].get("adopted") is False
              and systems[n]["val"]["nDCG@10"] > systems[chosen]["val"]["nDCG@10"]]
    if passed:
        why += f" among the systems in use ({', '.join(passed)} led on validation but was not adopted over its start)"
    if systems[chosen]["trained"]:
        free = max(UNTRAINED, key=lambda n: (systems[n]["val"]["nDCG@10"], -UNTRAINED.index(n)))
        ok, new, old, p = beats(chosen, free)
        if not ok:
            return free, (f"{chosen} led on validation ({new:.4f} vs {old:.4f}) within the noise (one-sided p = "
                          f"{p:.3g}, adopt_p {adopt_p}): the best training-free system")
    return chosen, why


def build_report(runner, total: float, sizing: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json of a finished recipe run: each system's metrics (test and validation), its wall time (the
    stages it needs, :func:`tandem.recipe.stages.chain`), its adoption and paired test against its start; the
    system selected on validation; whether training paid against the training-free baseline; sizes, stage times,
    memory, the models used and the training curves."""
    from tandem.eval.stats import describe_test, paired_test

    s = runner.stages.seconds
    systems: dict[str, dict[str, Any]] = {}
    per_query: dict[str, tuple[dict, dict]] = {}
    for name, sys_ in runner.systems.items():
        test, val = runner._evaluate(sys_), runner._evaluate(sys_, "val")
        per_query[name] = (test.pop("_per_query"), val.pop("_per_query") if val else {})
        row = {**test, "seconds": sum(s.get(p, 0.0) for p in chain(runner.cfg, sys_["dir"])),
               "run": str(runner.out / sys_["dir"] / sys_["file"]), "val": val, "trained": sys_["trained"]}
        if sys_["start"]:
            row["start"] = sys_["start"]
            row["adopted"] = sys_["adopted"]
            row["paired_vs_start"] = {"test": paired_test(per_query[name][0], per_query[sys_["start"]][0])}
            if val:
                row["paired_vs_start"]["val"] = paired_test(per_query[name][1], per_query[sys_["start"]][1])
        if sys_["note"]:
            row["note"] = sys_["note"]
        systems[name] = row
    if runner.validating:
        chosen, why = choose_served(systems, runner._beats, runner.cfg.adopt_p, runner.val.why)
    else:
        chosen = "joint-retriever+reranker"
        why = f"the last trained system: {runner.val.why}"
    trained = [n for n in systems if systems[n]["trained"]]
    in_use = [n for n in trained if systems[n].get("adopted") is not False] or trained
    best_trained = max(in_use, key=lambda n: systems[n]["val"]["nDCG@10"]) if runner.validating else chosen
    base = "hybrid-zero-shot"
    paid = {"best_trained": best_trained, "baseline": base,
            "test": paired_test(per_query[best_trained][0], per_query[base][0])}
    if runner.validating:
        paid["val"] = paired_test(per_query[best_trained][1], per_query[base][1])
    paid["earned"] = bool(paid["test"]["diff"] > 0 and paid["test"]["p"] < 0.05)
    paid["summary"] = ("training earned its minutes: " if paid["earned"] else
                       "training did not earn its minutes (not above the training-free baseline at p < 0.05): ") \
        + describe_test(paid["test"], best_trained, base) + f" on {runner.cfg.eval_split}"
    claim = _joint_vs_alone(runner.cfg.retriever_only_row, per_query, runner.cfg.eval_split)
    selected = {"system": chosen, "reason": why, "trained": systems[chosen]["trained"],
                "nDCG@10": systems[chosen]["nDCG@10"],
                "val_nDCG@10": systems[chosen]["val"]["nDCG@10"] if runner.validating else None}
    if runner.validating and not systems[chosen]["trained"]:
        selected["note"] = f"No trained system beats {chosen} on validation: the recipe serves {chosen}"
    systems.update(peer_rows(runner.cfg.peers))
    curves = {}
    for stage in TRAINING_STAGES:
        path = runner.out / stage / "metrics.jsonl"
        if path.exists():
            curves[stage] = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    hybrid_lists = _hybrid_lists(runner.out / "denoise" / "lists.report.json")
    # total_seconds: what the whole pipeline cost (a cached stage counts its original run);
    # wall_seconds: this invocation alone
    return {"data": str(runner.cfg.data), "split": runner.cfg.eval_split, "queries": len(runner.test_ds.qrels),
            "config": asdict(runner.cfg), "systems": systems, "headline": chosen, "selected": selected,
            "validation": {"source": runner.val.source, "queries": len(runner.val.queries), "why": runner.val.why},
            "decisions": runner.decisions, "training_paid": paid, **({"joint_vs_alone": claim} if claim else {}),
            "sizing": sizing or {},
            "stage_seconds": s, "stage_plan_seconds": {k: round(v, 1) for k, v in runner.stages.plan.items()},
            "total_seconds": max(total, sum(s.values())), "wall_seconds": total,
            "stage_peak_rss_bytes": runner.stages.peak_rss, "peak_rss_bytes": _process_peak_rss(),
            "models": {"retriever": runner.retriever or str(runner.cfg.model),
                       "reranker": str(runner.out / "joint" / "reranker") if runner.reranker_adopted else None,
                       "first_stage": runner.first},
            "curves": curves, **({"hybrid_lists": hybrid_lists} if hybrid_lists else {})}


def _joint_vs_alone(kind: str, per_query: dict[str, tuple[dict, dict]], split: str) -> dict[str, Any] | None:
    """RocketQAv2's claim in this run: the joint retriever against the retriever trained alone (the
    ``retriever-only`` row), paired over queries on the reported split and on validation. Only ``equal-steps`` and
    ``steps`` rows train alone for the joint stage's steps on its lists; the ``warmup`` row is where joint training
    starts, so the difference there is what the joint stage added, not the claim at an equal budget."""
    from tandem.eval.stats import describe_test, paired_test

    if "joint-retriever" not in per_query or "retriever-only" not in per_query:
        return None
    (jt, jv), (at, av) = per_query["joint-retriever"], per_query["retriever-only"]
    out: dict[str, Any] = {"alone": kind, "equal_budget": kind in ("equal-steps", "steps"),
                           "test": paired_test(jt, at)}
    if jv and av:
        out["val"] = paired_test(jv, av)
    out["summary"] = (describe_test(out["test"], "joint-retriever", "retriever-only") + f" on {split}"
                      + (f"; on validation {out['val']['diff']:+.4f} (p = {out['val']['p']:.3g})" if "val" in out
                         else "")
                      + ("" if out["equal_budget"] else " (not an equal-budget comparison: the retriever-only row is "
                         "the warm-up joint training starts from; retriever_only: equal-steps trains it alone for "
                         "the joint stage's steps)"))
    return out


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
    source = RecipeConfig(**{k: v for k, v in RecipeConfig.upgrade(cfg).items() if k in known}).retriever_only_row
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
                  "baseline (`retriever_only=equal-steps` adds one).",
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
    if report.get("joint_vs_alone"):
        lines += [f"Joint training against the retriever trained alone: {report['joint_vs_alone']['summary']}.", ""]
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
