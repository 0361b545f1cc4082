"""Load test of `tandem serve`: latency percentiles and throughput, with and without micro-batching.

Starts the service twice on 127.0.0.1 (``--max-batch 32`` and ``--max-batch 1``, same index and
re-ranker), then for each mode (retrieve only; retrieve + re-rank top-20; top-100) and each
concurrency (1, 4, 16 clients) sends SciFact test queries and measures per-request latency and
overall queries/s. Prints a Markdown table and writes JSON (``--out``).

    python benchmarks/serve_load.py --index runs/exp/cache/zs-index --reranker runs/ce/reranker --data scifact
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MODES = {"retrieve": dict(rerank=False, candidates=10), "rerank-20": dict(rerank=True, candidates=20),
         "rerank-100": dict(rerank=True, candidates=100)}


def start(args, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tandem", "serve", args.index, "--port", str(port), "--max-batch", str(max_batch),
           "--max-wait-ms", str(args.max_wait_ms)]
    if args.reranker:
        cmd += ["--reranker", args.reranker]
    if args.data:
        cmd += ["--data", args.data]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


def post(url: str, body: dict) -> float:
    req = urllib.request.Request(url + "/search", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - t0


def load(url: str, queries: list[str], mode: str, clients: int, n: int) -> dict:
    bodies = [{"query": queries[i % len(queries)], "k": 10, **MODES[mode]} for i in range(n)]
    post(url, bodies[0])  # warm
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = list(pool.map(lambda b: post(url, b), bodies))
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"requests": n, "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "queries_per_s": n / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--reranker", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", default="retrieve=256,rerank-20=48,rerank-100=16",
                    help="requests per (mode, concurrency)")
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--out", default="runs/serve-load.json")
    args = ap.parse_args()

    from tandem.data import load_beir, resolve_dataset

    ds = load_beir(resolve_dataset(args.data or "scifact"), args.split)
    queries = list(ds.split_queries().values())
    counts = {k: int(v) for k, v in (kv.split("=") for kv in args.requests.split(","))}
    modes = [m for m in MODES if m in counts and (args.reranker or not MODES[m]["rerank"])]
    results: dict = {}
    for batching, max_batch in (("micro-batched", 32), ("batch size 1", 1)):
        proc, url = start(args, max_batch)
        try:
            for mode in modes:
                for c in map(int, args.concurrency.split(",")):
                    r = load(url, queries, mode, c, max(counts[mode], c))
                    results.setdefault(mode, {}).setdefault(str(c), {})[batching] = r
                    print(f"{mode:10s} c={c:<3d} {batching:14s} p50 {r['p50_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f}  "
                          f"p99 {r['p99_ms']:8.1f}  {r['queries_per_s']:7.2f} q/s", flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    print("\n| mode | clients | p50 ms | p95 ms | p99 ms | queries/s | batch-1 queries/s | micro-batching gain |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, per in results.items():
        for c, r in per.items():
            mb, one = r["micro-batched"], r["batch size 1"]
            print(f"| {mode} | {c} | {mb['p50_ms']:.1f} | {mb['p95_ms']:.1f} | {mb['p99_ms']:.1f} | "
                  f"{mb['queries_per_s']:.2f} | {one['queries_per_s']:.2f} | "
                  f"{mb['queries_per_s'] / one['queries_per_s']:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"index": args.index, "reranker": args.reranker, "results": results,
                                          "cpu_count": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
