"""Joint pairs: each joint run's re-ranker re-ranking its own retriever's test run to depth k (issue 4's pair row).

Each DIR is a `benchmarks/train_scifact.py --mode joint` output (test.trec + reranker/). Prints JSON.

    python benchmarks/rerank_own_topk.py runs/exp/j-und-s1 runs/exp/joint-s2 runs/exp/joint-s3 --k 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

MEASURES = ["nDCG@10", "RR@10", "R@100"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--k", type=int, default=50)
    args = ap.parse_args()

    from tandem.data import load_beir, read_run
    from tandem.eval.metrics import evaluate
    from tandem.models.reranker import Reranker
    from tandem.rerank import rerank

    ds = load_beir(args.data, "test")
    out = {"k": args.k, "runs": {}}
    for d in map(Path, args.dirs):
        first = read_run(d / "test.trec")
        t0 = time.perf_counter()
        rr = rerank(first, ds.queries, ds.corpus, Reranker.from_pretrained(d / "reranker"), args.k)
        out["runs"][str(d)] = {"first_stage": evaluate(first, ds.qrels, MEASURES),
                               "reranked": evaluate(rr, ds.qrels, MEASURES), "seconds": time.perf_counter() - t0}
    if len(args.dirs) > 1:
        out["mean_std"] = {m: [statistics.mean(v["reranked"][m] for v in out["runs"].values()),
                               statistics.stdev(v["reranked"][m] for v in out["runs"].values())] for m in MEASURES}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
