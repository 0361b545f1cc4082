"""Exact search speed on a tandem index: queries/s of FAISS search alone and with query encoding.

    python benchmarks/search_speed.py --index runs/demo/index/index --data ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--k", type=int, default=100)
    args = ap.parse_args()

    from tandem.data import load_queries
    from tandem.index.dense import load_index_and_encoder

    index, encoder = load_index_and_encoder(args.index)
    queries = list(load_queries(os.path.join(args.data, "queries.jsonl")).values())
    encoder.encode(queries[:32])
    t0 = time.perf_counter()
    vecs = encoder.encode(queries, batch_size=64)
    t_enc = time.perf_counter() - t0
    index.search_vectors(vecs[:10], args.k)
    t0 = time.perf_counter()
    for _ in range(5):
        index.search_vectors(vecs, args.k)
    t_search = (time.perf_counter() - t0) / 5
    one = []
    for v in vecs[:200]:
        t0 = time.perf_counter()
        index.search_vectors(v[None, :], args.k)
        one.append(time.perf_counter() - t0)
    print(json.dumps({
        "benchmark": "search_speed", "index_size": len(index), "queries": len(queries), "k": args.k,
        "faiss_batch_queries_per_s": len(queries) / t_search,
        "faiss_single_query_ms_p50": float(np.median(one) * 1000),
        "encode_queries_per_s": len(queries) / t_enc,
        "end_to_end_queries_per_s": len(queries) / (t_enc + t_search),
    }, indent=2))


if __name__ == "__main__":
    main()
