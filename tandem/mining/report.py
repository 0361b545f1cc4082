"""The mining report beside the lists file: JSON (every number) and Markdown (for a person)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tandem.io import atomic_open, manifest, write_json


def write_report(out: Path, report: dict[str, Any]) -> None:
    stem = out.parent / out.name.removesuffix(".jsonl")
    write_json(Path(f"{stem}.report.json"), manifest("mining report", **report))
    with atomic_open(Path(f"{stem}.report.md")) as f:
        f.write(render_report(report))


def render_report(r: dict[str, Any]) -> str:
    s = r["settings"]
    stages = " + ".join(n for n, on in (("dense", s["dense"]), ("BM25", s["bm25"])) if on)
    lines = [f"# Mining report: {r['lists_file']}", "",
             f"First stage: {stages} (retriever {r.get('retriever') or r.get('index') or 'default model'}), "
             f"top-{s['top_n']} per {s['split']} query. {r['lists']} lists written"
             f" ({r['queries_left_out']} queries without a positive left out, {r['queries_without_negatives']} "
             f"without any negative). {r['total_seconds']:.0f} s in all "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in r['seconds'].items())}).", "",
             "## Candidates", "",
             f"Per query: mean {r['candidates_per_query']['mean']:.1f}, min {r['candidates_per_query']['min']}, "
             f"max {r['candidates_per_query']['max']}. Queries with a labelled positive among their candidates: "
             f"{100 * r['positives_retrieved_share']:.1f}%.", "",
             "| best positive's first-stage rank | queries |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["positive_first_rank"].items()]
    d = r.get("denoising")
    if not d:
        lines += ["", "No re-ranker given: the lists hold the undenoised pool only.", ""]
        return "\n".join(lines)
    c = d["calibration"]
    chosen = (f" (low chosen as the {100 * s['low_from_positives']:.0f}% quantile of the held-out positives' "
              "probabilities)") if s.get("low_from_positives") else ""
    high_chosen = (f" (high chosen where {100 * s['high_from_precision']:.0f}% of the held-out candidates above it "
                   "are labelled positives)") if s.get("high_from_precision") and "high_from_precision" in c else ""
    mode = (f"probability < {s['low']:.4g}{chosen} -> denoised negative, > {s['high']:.4g}{high_chosen} -> "
            "pseudo-positive"
            if s["denoise_by"] == "prob" else
            f"re-ranker rank > {s['low_rank']} -> denoised negative, rank <= {s['high_rank']} -> pseudo-positive")
    lp = d["labelled_positives_probability"]
    lines += ["", "## Denoising", "",
              f"Re-ranker: {r['reranker']}{' (warmed up here)' if r['warmup_reranker'] else ''}; "
              f"{'first ' + str(s['denoise_top']) if s['denoise_top'] else 'all'} candidates scored. Calibration "
              f"{c['method']}: p = sigmoid({c['a']:.3f} * logit + {c['b']:.3f}), from {c['pairs']} labelled pairs of "
              f"{c['queries']} held-out queries ({c['positives']} positives)"
              + (f"; log-loss {c['log_loss']:.3f}, AUC {c['auc']:.3f}" if "auc" in c else "") + ".", "",
              *([f"**Not denoised**: {c['why']}.", ""] if c.get("usable") is False else []),
              f"Rule: {mode}.", "",
              "| what | count | share of scored candidates |", "|---|---|---|",
              f"| scored candidates (labelled positives excluded) | {d['scored_candidates']} | 100% |",
              f"| flagged as likely false negatives (not denoised) | {d['flagged_as_likely_false_negatives']} | "
              f"{100 * d['flagged_share']:.1f}% |",
              f"| denoised negatives | {d['denoised_negatives']} | {100 * d['denoised_share']:.1f}% |",
              f"| pseudo-positives added | {d['pseudo_positives']} (in {d['queries_with_pseudo_positive']} queries) | "
              "|",
              "",
              *_deeper_lines(d),
              f"Labelled positives as the denoiser sees them (the calibration queries', which a warm-up did not "
              f"train on): mean probability "
              f"{lp['mean'] if lp['mean'] is None else round(lp['mean'], 3)}; "
              f"above the high threshold {_pct(lp['above_high'])}, below the low one {_pct(lp['below_low'])} "
              "(a labelled positive is never made a negative, whatever its score).", ""]
    for kind, title in (("flagged", "Flagged as likely false negatives (kept out of the denoised pool)"),
                        ("pseudo_positives", "Pseudo-positives"), ("denoised_negatives", "Denoised negatives")):
        lines += [f"### {title}: a random sample", "", "| query | passage | p | first-stage rank |",
                  "|---|---|---|---|"]
        for e in d["samples"][kind]:
            lines.append(f"| {_cell(e['query'], 120)} | {_cell(e['pid'] + ': ' + e['passage'], 240)} | "
                         f"{e['probability']:.3f} | {e['first_stage_rank']} |")
        lines.append("")
    return "\n".join(lines)


def _deeper_lines(d: dict[str, Any]) -> list[str]:
    """The report's lines on the lists that are hybrid, and on the denoised negatives found below the candidates."""
    h = d.get("training_lists_with_denoised_pool")
    lines = [f"Training lists with a denoised pool (hybrid; the held-out queries' aside): {h['with']} of "
             f"{h['lists']} ({_pct(h['share'])})."] if h else []
    g = d.get("deeper") or {}
    if g.get("depth"):
        lines.append(f"Below the candidates (`denoise_depth` {g['depth']}): {g['queries']} queries had no denoised "
                     f"negative among them; {g['scored_candidates']} deeper candidates scored, {g['found']} queries "
                     f"found {g['denoised_negatives']} denoised negatives there.")
    return [*lines, ""] if lines else []


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _cell(text: str, n: int) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"
