"""Mean +- std over seeds of benchmarks/train_scifact.py results, as a Markdown table.

Runs are directories holding ``result.json`` named ``NAME-sSEED``; runs of the same NAME are the seeds of one
variant. Where several roots hold the same run (e.g. a rerun), the first root listed wins.

    python benchmarks/summarize_runs.py runs/gpu-2 runs/gpu-1 --variants g160 g256 g384
    python benchmarks/summarize_runs.py runs/gpu-2 --variants ja jb jc --retriever --first own-retriever
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def collect(roots: list[str]) -> dict[str, dict[int, dict]]:
    """variant -> seed -> result (the first root holding a run wins)."""
    found: dict[str, dict[int, dict]] = {}
    for root in roots:
        for path in sorted(Path(root).glob("*/result.json")):
            m = re.fullmatch(r"(.+)-s(\d+)", path.parent.name)
            if m:
                found.setdefault(m.group(1), {}).setdefault(int(m.group(2)), json.loads(path.read_text()))
    return found


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def seeds_row(name: str, rows: list[dict], measures=("nDCG@10", "RR@10", "R@100")) -> str:
    """A Markdown row: ``name``, each measure's mean +- std over ``rows`` (one value where every row agrees,
    as for a system that does not depend on the seed), then each row's nDCG@10."""
    cells = []
    for m in measures:
        xs = [round(row[m], 6) for row in rows if row.get(m) is not None]
        cells.append(cell(xs[:1] if len(set(xs)) == 1 else xs))
    per = " / ".join(f"{row['nDCG@10']:.4f}" for row in rows)
    return f"| {name} | {' | '.join(cells)} | {per} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--variants", nargs="*", default=None, help="variants to list, in order (default: all)")
    ap.add_argument("--retriever", action="store_true", help="columns of the trained retriever's test run")
    ap.add_argument("--first", nargs="*", default=["bm25", "zero-shot"],
                    help="first stages whose re-ranked nDCG@10 to list")
    args = ap.parse_args()
    found = collect(args.roots)
    cols = (["retriever nDCG@10", "RR@10", "R@100"] if args.retriever else []) + \
        [f"re-ranked {f} {m}" for f in args.first for m in ("nDCG@10", "RR@10")] + ["train s", "seeds"]
    print("| variant | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name in args.variants or sorted(found):
        seeds = found.get(name, {})
        rows = [seeds[s] for s in sorted(seeds)]
        cells = []
        if args.retriever:
            cells += [cell([r["test"][k] for r in rows if "test" in r]) for k in ("nDCG@10", "RR@10", "R@100")]
        cells += [cell([r["rerank"][f]["reranked"][m] for r in rows if f in r.get("rerank", {})])
                  for f in args.first for m in ("nDCG@10", "RR@10")]
        cells += [f"{statistics.mean(r['train_seconds'] for r in rows):.0f}" if rows else "-",
                  ",".join(str(s) for s in sorted(seeds)) or "-"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
