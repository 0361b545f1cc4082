"""The demo (or any recipe) over seeds: mean +- std of each system's metrics from several report.json, with
paired tests over queries, seeds pooled.

    for s in 1 2 3; do tandem demo --data nfcorpus --out runs/nf-s$s seed=$s; done
    python benchmarks/demo_seeds.py runs/nf-s1 runs/nf-s2 runs/nf-s3

Prints a Markdown table (systems in the reports' order: validation nDCG@10, test metrics, how often the
trained model was adopted), then per trained system its paired test against its starting point and the
selected system's against the training-free `hybrid-zero-shot`, on the reported split (queries keyed
(seed, qid)), and each run's total and stage seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from summarize_runs import cell, seeds_row  # benchmarks/ is on the path when a script here runs


def per_query(run_path: str, qrels) -> dict[str, float]:
    from tandem.data import read_run
    from tandem.eval.metrics import evaluate_per_query

    return {q: v["nDCG@10"] for q, v in evaluate_per_query(read_run(run_path), qrels, ["nDCG@10"]).items()}


def main() -> None:
    from tandem.data import load_beir
    from tandem.eval.stats import describe_test, paired_test

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="recipe output directories (each with report.json)")
    args = ap.parse_args()
    reports = [json.loads((Path(r) / "report.json").read_text()) for r in args.runs]
    recipes = [json.loads((Path(r) / "recipe.json").read_text()) for r in args.runs]
    names = [n for n in reports[0]["systems"] if not reports[0]["systems"][n].get("peer")]
    n = len(reports)
    print(f"| system | val nDCG@10 | nDCG@10 mean +- std (n={n}) | RR@10 | R@100 | per run nDCG@10 | adopted |\n"
          "|---|---|---|---|---|---|---|")
    for name in names:
        rows = [r["systems"][name] for r in reports if name in r["systems"]]
        val = [round(row["val"]["nDCG@10"], 6) for row in rows if row.get("val")]
        row = seeds_row(name, rows)
        adopted = [row.get("adopted") for row in rows if row.get("adopted") is not None]
        first, rest = row.split(" | ", 1)
        print(f"{first} | {cell(val[:1] if len(set(val)) == 1 else val) if val else '-'} | {rest.rstrip(' |')} | "
              + (f"{sum(adopted)}/{len(adopted)}" if adopted else "-") + " |")
    print()
    qrels = [load_beir(rc["data_dir"], r["split"]).qrels for rc, r in zip(recipes, reports)]
    pq = [{name: per_query(row["run"], q) for name, row in r["systems"].items() if not row.get("peer")}
          for r, q in zip(reports, qrels)]

    def pooled(a: str, b: str, picks=None) -> dict:
        xs, ys = {}, {}
        for i, (r, p) in enumerate(zip(reports, pq)):
            sa = picks[i] if picks else a
            if sa in p and b in p:
                xs.update({(i, q): v for q, v in p[sa].items()})
                ys.update({(i, q): v for q, v in p[b].items()})
        return paired_test(xs, ys)

    for name in names:
        starts = {r["systems"][name].get("start") for r in reports if name in r["systems"]} - {None}
        for start in sorted(starts):
            print(f"- {describe_test(pooled(name, start), name, start)}")
    selected = [r["headline"] for r in reports]
    print(f"- selected on validation ({', '.join(selected)}): "
          + describe_test(pooled("", "hybrid-zero-shot", selected), "selected", "hybrid-zero-shot"))
    print()
    for path, r in zip(args.runs, reports):
        stages = ", ".join(f"{s} {v:.0f}" for s, v in r["stage_seconds"].items())
        print(f"{path}: seed {r['config'].get('seed')}, {r['total_seconds']:.0f} s, selected {r['headline']}; "
              f"decisions: {'; '.join(r.get('decisions', []))} ({stages})")


if __name__ == "__main__":
    main()
