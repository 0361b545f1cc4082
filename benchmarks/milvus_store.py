"""The Milvus store against FAISS on the same vectors: quality, build time, query latency and queries/s.

Two parts, each with the same vectors in every store:

1. A real corpus (``--data``, default SciFact): the passages are encoded once with the zero-shot model
   (``encode_in_shards``: the same shards ``tandem index`` writes; cached in ``--cache``), then FAISS flat,
   FAISS HNSW, Milvus Lite FLAT and Milvus Lite HNSW are built from those shards (build time = filling the
   store; the encoding is common to all and reported once). Each searches the split's queries (top 100);
   nDCG@10 per query, the paired difference to FAISS flat, the top-10 overlap with it, single-query latency
   (p50 / p95 over 200 queries, one at a time, as a service answers) and batched queries/s.
2. ``--scale N`` (e.g. 1000000): N synthetic 384-dim vectors made from the corpus's embeddings as
   ``ann_scale.py`` makes them (each a passage vector plus noise), inserted into Milvus Lite FLAT (and HNSW
   with ``--scale-hnsw``), timed, with recall@10 against FAISS flat and queries/s; the peak RSS of the process
   says what holding them costs.

    python benchmarks/milvus_store.py --data scifact --cache runs/milvus-bench --scale 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed_queries(index, vecs: np.ndarray, k: int) -> dict:
    index.search_vectors(vecs[:5], k)  # warm
    one = []
    for v in vecs[:200]:
        t0 = time.perf_counter()
        index.search_vectors(v[None, :], k)
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(0, len(vecs), 64):
        index.search_vectors(vecs[s : s + 64], k)
    batched = len(vecs) / (time.perf_counter() - t0)
    return {"p50_ms": float(np.median(one) * 1000), "p95_ms": float(np.percentile(one, 95) * 1000),
            "batched_queries_per_s": batched}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--cache", default="runs/milvus-bench")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--scale", type=int, default=0)
    ap.add_argument("--scale-hnsw", action="store_true")
    ap.add_argument("--out", default="runs/milvus-bench.json")
    args = ap.parse_args()

    from tandem.data import load_beir, resolve_dataset
    from tandem.data.dataset import corpus_file
    from tandem.eval.metrics import evaluate_per_query
    from tandem.eval.stats import paired_test
    from tandem.index.dense import encode_in_shards, encoder_info
    from tandem.index.faiss_index import DenseIndex, new_faiss
    from tandem.index.milvus_store import build_milvus
    from tandem.io import sha256_file
    from tandem.models.encoder import Encoder

    cache = Path(args.cache)
    directory = resolve_dataset(args.data)
    cfile = corpus_file(directory)
    ds = load_beir(directory, args.split)
    enc = Encoder.from_pretrained(None, max_length=args.max_length)
    info = {**encoder_info(enc), "corpus_hash": sha256_file(cfile), "corpus_file": str(cfile)}
    t0 = time.perf_counter()
    paths, ids = encode_in_shards(cfile, cache / "shards", enc, 50_000, 32, True, info)
    res: dict = {"data": str(directory), "passages": len(ids), "max_length": args.max_length,
                 "encode_s (cached after the first run)": time.perf_counter() - t0, "stores": {}}
    vecs = np.concatenate([np.load(p) for p in paths]).astype(np.float32)
    queries = ds.split_queries()
    qids = list(queries)
    qv = enc.encode([queries[q] for q in qids], batch_size=64)
    runs, stores = {}, {}
    for name, store, kind in (("faiss-flat", "faiss", "flat"), ("faiss-hnsw", "faiss", "hnsw"),
                              ("milvus-lite-flat", "milvus", "flat"), ("milvus-lite-hnsw", "milvus", "hnsw")):
        out = cache / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        if store == "faiss":
            index = new_faiss(vecs.shape[1], len(ids), kind)
            index.add(vecs)
            idx = DenseIndex(index, ids, {**info, "index_type": kind})
        else:
            work = cache / f"{name}.work"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            idx = build_milvus(paths, ids, info, out, work, vecs.shape[1], kind)
            shutil.rmtree(work, ignore_errors=True)
        build_s = time.perf_counter() - t0
        run = idx.search(qids, qv, args.k)
        runs[name] = run
        stores[name] = idx
        res["stores"][name] = {"build_s": build_s, **timed_queries(idx, qv, args.k)}
    per = {n: evaluate_per_query(r, ds.qrels, ["nDCG@10"]) for n, r in runs.items()}
    base = {q: m["nDCG@10"] for q, m in per["faiss-flat"].items()}
    for name, rows in per.items():
        mine = {q: m["nDCG@10"] for q, m in rows.items()}
        overlap = np.mean([len(set(list(runs[name][q])[:10]) & set(list(runs["faiss-flat"][q])[:10])) / 10
                           for q in qids])
        test = paired_test(mine, base) if name != "faiss-flat" else {}
        res["stores"][name].update({"nDCG@10": float(np.mean(list(mine.values()))), "top10_overlap_with_flat":
                                    float(overlap), "paired_vs_flat": test})
    for idx in stores.values():
        idx.close()
    res["peak_rss_gb_after_corpus"] = rss_gb()
    if args.scale:
        res["scale"] = scale(args, vecs, cache)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res, indent=2, default=float))


def scale(args, base: np.ndarray, cache: Path) -> dict:
    """N synthetic vectors (ann_scale.py's recipe) in Milvus Lite against FAISS flat."""
    import faiss

    from benchmarks.ann_scale import recall_at, synth
    from tandem.index.milvus_store import build_milvus

    rng = np.random.default_rng(0)
    xb = synth(base, args.scale, 0.03, rng)
    xq = synth(base, 1000, 0.03, rng)
    ids = [f"s{i}" for i in range(args.scale)]
    shards = cache / "scale-shards"
    shutil.rmtree(shards, ignore_errors=True)
    shards.mkdir(parents=True)
    paths = []
    for i, s in enumerate(range(0, args.scale, 100_000)):
        p = shards / f"shard-{i:05d}.npy"
        np.save(p, xb[s : s + 100_000])
        paths.append(p)
    flat = faiss.IndexFlatIP(xb.shape[1])
    t0 = time.perf_counter()
    flat.add(xb)
    out: dict = {"n": args.scale, "faiss_flat_build_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    _, truth = flat.search(xq, 10)
    out["faiss_flat_queries_per_s"] = len(xq) / (time.perf_counter() - t0)
    del flat
    info = {"model": "synthetic", "model_fingerprint": "synthetic", "dim": int(xb.shape[1])}
    kinds = ("flat", "hnsw") if args.scale_hnsw else ("flat",)
    del xb
    for kind in kinds:
        d = cache / f"scale-milvus-{kind}"
        work = cache / f"scale-milvus-{kind}.work"
        for x in (d, work):
            shutil.rmtree(x, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        idx = build_milvus(paths, ids, info, d, work, base.shape[1], kind)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, pos = idx.search_vectors(xq[:200], 10)
        qps = 200 / (time.perf_counter() - t0)
        lat = []
        for v in xq[200:300]:
            t1 = time.perf_counter()
            idx.search_vectors(v[None, :], 10)
            lat.append(time.perf_counter() - t1)
        out[f"milvus_lite_{kind}"] = {"build_s": build_s, "recall@10": recall_at(pos, truth[:200], 10),
                                      "batched_queries_per_s": qps, "p50_ms": float(np.median(lat) * 1000),
                                      "peak_rss_gb": rss_gb()}
        print(json.dumps({kind: out[f"milvus_lite_{kind}"]}), flush=True)
        idx.close()
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(shards, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
