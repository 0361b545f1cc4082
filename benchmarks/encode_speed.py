"""Encoding speed: tandem's Encoder vs sentence-transformers ``encode`` on the same passages.

Same model (the embedded all-MiniLM-L6-v2), same texts, same max length and batch size, measured
in one process, alternating which runs first. Prints JSON.

    python benchmarks/encode_speed.py --n 1000 --max-length 256 --batch-size 32 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from tandem.data import load_corpus
    from tandem.models.encoder import Encoder
    from tandem.models.hf import default_model_path

    texts = load_corpus(os.path.join(args.data, "corpus.jsonl"))[: args.n]
    ours = Encoder.from_pretrained(None, max_length=args.max_length)
    st = SentenceTransformer(str(default_model_path()), device="cpu")
    st.max_seq_length = args.max_length
    ours.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    st.encode(texts[:64], batch_size=args.batch_size)
    times = {"tandem": [], "sentence-transformers": []}
    vecs = {}
    for r in range(args.repeats):
        order = ["tandem", "sentence-transformers"] if r % 2 == 0 else ["sentence-transformers", "tandem"]
        for name in order:
            t0 = time.perf_counter()
            if name == "tandem":
                vecs[name] = ours.encode(texts, batch_size=args.batch_size)
            else:
                vecs[name] = st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
            times[name].append(time.perf_counter() - t0)
    a, b = vecs["tandem"], vecs["sentence-transformers"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "encode_speed", "passages": len(texts), "max_length": args.max_length,
        "batch_size": args.batch_size, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "seconds": best, "passages_per_s": {k: len(texts) / v for k, v in best.items()},
        "speedup_tandem_vs_st": best["sentence-transformers"] / best["tandem"],
        "min_cosine": float(cos.min()), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "malloc_tuned": bool(os.environ.get("MALLOC_MMAP_THRESHOLD_")),
    }, indent=2))


if __name__ == "__main__":
    main()
