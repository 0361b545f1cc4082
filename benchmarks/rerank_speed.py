"""Re-ranking speed: tandem's Reranker (PyTorch, ONNX fp32, ONNX int8) vs sentence-transformers CrossEncoder.predict.

Same plain cross-encoder (the embedded MiniLM body with a one-logit head, saved once so every
system loads the same weights), same (query, passage) pairs from SciFact (test queries x their
BM25 top candidates), same max length and batch size; one process, order rotated, best of
``--repeats``. Prints JSON with pairs/s, the ratio to sentence-transformers and the largest score
difference from the PyTorch scores.

    python benchmarks/rerank_speed.py --pairs 400 --max-length 160 --repeats 2
    python benchmarks/rerank_speed.py --backends torch,torch-bf16 --st-bf16     # bf16 against bf16

``--st-bf16`` adds ``CrossEncoder`` with its weights in bf16 (``model_kwargs={"torch_dtype": torch.bfloat16}``),
the way its users get bf16; ``speedup_vs_st_same_precision`` then compares each tandem backend with the peer at
its own precision.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backends", default="torch,onnx,onnx-int8", help="torch (fp32), torch-bf16, onnx, onnx-int8")
    ap.add_argument("--st-bf16", action="store_true", help="also time CrossEncoder with bf16 weights")
    args = ap.parse_args()

    from sentence_transformers.cross_encoder import CrossEncoder

    from tandem.data import load_beir
    from tandem.index.bm25 import bm25_search
    from tandem.models.reranker import Reranker
    from tandem.utils import device_name, inference_device

    ds = load_beir(args.data, "test")
    run = bm25_search(ds.corpus, ds.split_queries(), k=20)
    pairs = [(ds.queries[q], ds.corpus.text(p)) for q, docs in run.items() for p in docs][: args.pairs]
    with tempfile.TemporaryDirectory() as d:
        Reranker.from_pretrained(None, max_length=args.max_length).save(d)
        systems = {}
        for b in args.backends.split(","):  # RUNTIME[-bf16]: torch (fp32), onnx, onnx-int8; -bf16: autocast
            ce = Reranker.from_pretrained(d).set_backend(b.removesuffix("-bf16"))
            ce.precision = "bf16" if b.endswith("-bf16") else "fp32"
            systems["tandem" if b == "torch" else f"tandem-{b}"] = ce
        import torch

        sts = {"sentence-transformers": CrossEncoder(d, max_length=args.max_length, device=inference_device())}
        if args.st_bf16:
            sts["sentence-transformers-bf16"] = CrossEncoder(d, max_length=args.max_length, device=inference_device(),
                                                             model_kwargs={"torch_dtype": torch.bfloat16})
        names = [*systems, *sts]

        def score(name, items):
            if name in sts:
                # raw logits, as tandem returns them (CrossEncoder applies a sigmoid by default for one label)
                return np.asarray(sts[name].predict(items, batch_size=args.batch_size, show_progress_bar=False,
                                             activation_fn=torch.nn.Identity())).reshape(-1)
            return systems[name].predict(items, batch_size=args.batch_size)

        for n in names:
            score(n, pairs[:32])  # warm-up
        times = {n: [] for n in names}
        scores = {}
        for r in range(args.repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                scores[n] = score(n, pairs)
                times[n].append(time.perf_counter() - t0)
    best = {n: min(v) for n, v in times.items()}
    ref = scores.get("tandem", scores["sentence-transformers"])
    print(json.dumps({
        "benchmark": "rerank_speed", "pairs": len(pairs), "max_length": args.max_length, "batch_size": args.batch_size,
        "seconds": best, "pairs_per_s": {n: len(pairs) / t for n, t in best.items()},
        "speedup_vs_st": {n: best["sentence-transformers"] / best[n] for n in names[1:]},
        "speedup_vs_st_same_precision": {
            n: best["sentence-transformers-bf16" if n.endswith("-bf16") else "sentence-transformers"] / best[n]
            for n in systems if not n.endswith("-bf16") or "sentence-transformers-bf16" in best},
        "max_abs_diff_vs_torch": {n: float(np.abs(scores[n] - ref).max()) for n in names},
        "score_std": float(np.std(ref)), "device": device_name(),
    }, indent=2))


if __name__ == "__main__":
    main()
