"""Approximate search at scale: HNSW and IVF-PQ against exact search on N synthetic passage vectors.

No corpus of a million passages exists here, so the vectors are made from real ones: each is a
SciFact passage embedding (from an index's ``embeddings.npy``) plus Gaussian noise, renormalised,
which keeps the clustered, anisotropic shape of real embeddings (uniform random vectors would make
any ANN look worse than it is). Queries are held-out noisy copies too. For each index: build time,
size in memory (serialised bytes), then recall@10 against exact search and queries/s (batched,
this machine's threads) over a sweep of efSearch / nprobe. Prints a Markdown table and JSON.

    python benchmarks/ann_scale.py --embeddings runs/exp/cache/zs-index/embeddings.npy --n 1000000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def synth(base: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        v = base[rng.integers(len(base), size=m)] + noise * rng.standard_normal((m, base.shape[1]), dtype=np.float32)
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def timed_search(index, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    _, ids = index.search(q, k)
    return ids, len(q) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.03, help="per-dimension noise (unit vectors, 384 dims)")
    ap.add_argument("--out", default="runs/ann-scale.json")
    args = ap.parse_args()
    import faiss

    from tandem.index.faiss_index import build_faiss

    rng = np.random.default_rng(0)
    base = np.load(args.embeddings).astype(np.float32)
    xb = synth(base, args.n, args.noise, rng)
    xq = synth(base, args.queries, args.noise, rng)
    res: dict = {"n": args.n, "dim": int(xb.shape[1]), "queries": args.queries, "threads": faiss.omp_get_max_threads()}
    t0 = time.perf_counter()
    flat = build_faiss(xb, "flat")
    res["flat"] = {"build_s": time.perf_counter() - t0, "bytes": int(xb.nbytes)}
    truth, qps = timed_search(flat, xq, 10)
    res["flat"]["queries_per_s"] = qps
    del flat
    rows = []
    for kind, sweep, param in (("hnsw", (32, 64, 128, 256), "efSearch"), ("ivfpq", (8, 16, 32, 64, 128), "nprobe")):
        t0 = time.perf_counter()
        index = build_faiss(xb, kind)
        build_s = time.perf_counter() - t0
        size = int(faiss.serialize_index(index).nbytes)
        res[kind] = {"build_s": build_s, "bytes": size, "sweep": {}}
        for v in sweep:
            if kind == "hnsw":
                index.hnsw.efSearch = v
            else:
                index.nprobe = v
            ids, qps = timed_search(index, xq, 10)
            r = recall_at(ids, truth, 10)
            res[kind]["sweep"][v] = {"recall@10": r, "queries_per_s": qps}
            rows.append((kind, f"{param}={v}", build_s, size, r, qps))
        del index
    print(f"{args.n:,} vectors x {xb.shape[1]} dims, {args.queries} queries, {res['threads']} threads; exact search "
          f"{res['flat']['queries_per_s']:.0f} q/s, {xb.nbytes / 2**20:.0f} MiB")
    print("| index | setting | build s | size MiB | recall@10 | queries/s |\n|---|---|---|---|---|---|")
    for kind, setting, b, size, r, qps in rows:
        print(f"| {kind} | {setting} | {b:.0f} | {size / 2**20:.0f} | {r:.3f} | {qps:.0f} |")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
