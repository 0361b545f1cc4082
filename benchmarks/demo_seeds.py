"""The demo (or any recipe) over seeds: mean +- std of each system's test metrics from several report.json.

    for s in 1 2 3; do tandem recipe tandem/configs/demo.yaml --out runs/demo-b$s seed=$s; done
    python benchmarks/demo_seeds.py runs/demo-b1 runs/demo-b2 runs/demo-b3

Prints a Markdown table (systems in the reports' order) and each run's total and stage seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from summarize_runs import seeds_row  # benchmarks/ is on the path when a script here runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="recipe output directories (each with report.json)")
    args = ap.parse_args()
    reports = [json.loads((Path(r) / "report.json").read_text()) for r in args.runs]
    names = [n for n in reports[0]["systems"] if not reports[0]["systems"][n].get("peer")]
    n = len(reports)
    print(f"| system | nDCG@10 mean +- std (n={n}) | RR@10 | R@100 | per run nDCG@10 |\n|---|---|---|---|---|")
    for name in names:
        print(seeds_row(name, [r["systems"][name] for r in reports if name in r["systems"]]))
    print()
    for path, r in zip(args.runs, reports):
        stages = ", ".join(f"{s} {v:.0f}" for s, v in r["stage_seconds"].items())
        print(f"{path}: seed {r['config'].get('seed')}, {r['total_seconds']:.0f} s ({stages})")


if __name__ == "__main__":
    main()
