"""Peak resident memory and time per step of one training stage, per variant, each in a fresh process.

The demo's shapes by default: the re-ranker warm-up (gated, lists of 4, 12 a step, 256-token pairs), the joint
stage (the same plus the retriever at 128 passage tokens with in-batch negatives) and the retriever warm-up
(lists of 2, 32 a step). Each variant runs ``--steps`` optimiser steps in its own process (``os.wait4`` gives
that child's peak RSS, as ``time -v`` does) with the allocator settings of ``scripts/env.sh`` unless
``--glibc-defaults``. Prints one JSON line per variant and a table.

    python benchmarks/train_memory.py --steps 3 --variants warmup,warmup:reranker_micro_lists=3,joint,...

A variant is ``STAGE[:key=value[,key=value...]]`` with STAGE one of warmup, joint, retriever-warmup; the
key=value pairs are training settings. Lists: ``--lists FILE`` or the zero-shot-free BM25 top-20 of SciFact's
training queries, built once into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "warmup": dict(mode="reranker", reranker_arch="gated", fit_mixing_lists=0, list_size=4, batch_size=12,
                   reranker_max_length=256, lr_reranker=3e-5),
    "joint": dict(mode="joint", list_size=4, batch_size=12, reranker_max_length=256, passage_max_length=128,
                  query_max_length=32, retriever_ce_weight=1.0, in_batch_negatives=True, lr_reranker=3e-5),
    "retriever-warmup": dict(mode="retriever", list_size=2, batch_size=32, passage_max_length=128,
                             query_max_length=32, in_batch_negatives=True),
}
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "10000000000", "MALLOC_TRIM_THRESHOLD_": "10000000000",
          "MALLOC_TOP_PAD_": "1000000000"}


def child(args) -> None:
    """Run one variant (in this process) and print its seconds per step."""
    from tandem.train.api import train

    stage, _, extra = args.variant.partition(":")
    overrides = {**SHAPES[stage], "max_steps": args.steps, "heldout_fraction": 0.0, "warmup_ratio": 0.0,
                 **dict(kv.split("=", 1) for kv in extra.split(",") if kv)}
    reranker = args.gated_reranker if stage == "joint" else None
    if stage == "joint" and not reranker:
        overrides["allow_untrained_reranker"] = True
        overrides["reranker_arch"] = "gated"
    result = train(args.data, Path(args.work) / f"out-{os.getpid()}", lists=args.lists, reranker=reranker,
                   overrides=overrides, progress=False)
    print(json.dumps({"seconds_per_step": result.seconds / max(result.steps, 1)}))


def bm25_lists(data: str, work: Path) -> Path:
    path = work / "lists.jsonl"
    if not path.exists():
        from tandem.data import load_beir
        from tandem.index.bm25 import bm25_search
        from tandem.train import lists_from_run, write_lists

        ds = load_beir(data, "train")
        run = bm25_search(ds.corpus, ds.split_queries(), k=20)
        write_lists(path, lists_from_run(run, ds.qrels, ds.corpus, top_n=20))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--lists", default="")
    ap.add_argument("--work", default="/tmp/tandem-train-memory")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--variants", default="warmup,warmup:reranker_micro_lists=3")
    ap.add_argument("--gated-reranker", default="", help="a trained gated re-ranker for the joint stage (default: "
                                                          "a fresh one)")
    ap.add_argument("--glibc-defaults", action="store_true", help="without scripts/env.sh's malloc settings")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lists = args.lists or str(bm25_lists(args.data, work))
    env = {k: v for k, v in os.environ.items() if k not in MALLOC}
    if not args.glibc_defaults:
        env.update(MALLOC)
    rows = []
    for variant in args.variants.split(";") if ";" in args.variants else args.variants.split(" "):
        if not variant:
            continue
        cmd = [sys.executable, __file__, "--child", "--variant", variant, "--data", args.data, "--lists", lists,
               "--work", str(work), "--steps", str(args.steps), "--gated-reranker", args.gated_reranker]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status:
            raise SystemExit(f"{variant}: exit status {status}")
        res = json.loads(out.strip().splitlines()[-1])
        row = {"variant": variant, "peak_rss_gb": round(usage.ru_maxrss / 1e6, 3),
               "seconds_per_step": round(res["seconds_per_step"], 2), "wall_s": round(time.perf_counter() - t0, 1),
               "malloc": "glibc defaults" if args.glibc_defaults else "scripts/env.sh", "steps": args.steps,
               "cpu": platform.processor() or platform.machine()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'variant':56s} {'peak RSS GB':>11s} {'s/step':>7s}")
    for r in rows:
        print(f"{r['variant']:56s} {r['peak_rss_gb']:11.2f} {r['seconds_per_step']:7.2f}")


if __name__ == "__main__":
    main()
