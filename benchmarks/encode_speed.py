"""Encoding speed: tandem's Encoder (PyTorch fp32 / bf16, ONNX Runtime fp32 / int8) vs sentence-transformers.

Same model (the embedded all-MiniLM-L6-v2), same texts, same max length and batch size, measured
in one process, rotating which runs first. With ``--quality`` each tandem backend also indexes the
whole SciFact corpus and is scored on the test queries (nDCG@10), to show what int8 costs. Prints JSON.

    python benchmarks/encode_speed.py --n 1000 --max-length 256 --batch-size 32 --repeats 1
    python benchmarks/encode_speed.py --backends torch,onnx,onnx-int8 --repeats 2 --quality tandem-onnx-int8
    python benchmarks/encode_speed.py --backends torch,torch-bf16 --st-bf16 --quality tandem,tandem-torch-bf16

``torch`` is fp32; ``-bf16`` adds tandem's bf16 autocast (``--precision bf16``; the default ``auto`` picks it
where the hardware computes bf16 natively). ``--st-bf16`` adds sentence-transformers with its weights in bf16
(``model_kwargs={"torch_dtype": torch.bfloat16}``), the way its users get bf16.
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
    ap.add_argument("--backends", default="torch", help="tandem runtimes to time: torch (fp32), torch-bf16, onnx, "
                                                        "onnx-int8")
    ap.add_argument("--st-bf16", action="store_true", help="also time sentence-transformers with bf16 weights")
    ap.add_argument("--quality", default="", help="comma-separated systems (e.g. tandem,tandem-onnx-int8) that also "
                                                  "index all of SciFact and are scored on its test queries")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from tandem.data import load_corpus
    from tandem.models.encoder import Encoder
    from tandem.models.hf import default_model_path
    from tandem.utils import device_name, inference_device

    texts = load_corpus(os.path.join(args.data, "corpus.jsonl"))[: args.n]
    backends = args.backends.split(",")
    systems = {}
    for b in backends:  # RUNTIME[-bf16]: torch, onnx, onnx-int8; -bf16: bf16 autocast
        runtime, bf16 = b.removesuffix("-bf16"), b.endswith("-bf16")
        enc = Encoder.from_pretrained(None, max_length=args.max_length, backend=runtime,
                                      precision="bf16" if bf16 else "fp32")
        systems[f"tandem-{b}" if b != "torch" else "tandem"] = enc
    sts = {"sentence-transformers": SentenceTransformer(str(default_model_path()), device=inference_device())}
    if args.st_bf16:
        sts["sentence-transformers-bf16"] = SentenceTransformer(str(default_model_path()), device=inference_device(),
                                                                model_kwargs={"torch_dtype": torch.bfloat16})
    for st in sts.values():  # on tandem's device
        st.max_seq_length = args.max_length
    names = [*systems, *sts]

    def run(name, sample=None):
        sample = texts if sample is None else sample
        if name in sts:
            return np.asarray(sts[name].encode(sample, batch_size=args.batch_size, convert_to_numpy=True), np.float32)
        return systems[name].encode(sample, batch_size=args.batch_size)

    warmup_s = {}
    for name in names:  # warm-up
        t0 = time.perf_counter()
        run(name, texts[:64])
        warmup_s[name] = time.perf_counter() - t0
    times = {k: [] for k in names}
    vecs = {}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            vecs[name] = run(name)
            times[name].append(time.perf_counter() - t0)
    ref = vecs["sentence-transformers"]

    def min_cos(a):
        return float(((a * ref).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(ref, axis=1)).min())

    best = {k: min(v) for k, v in times.items()}
    out = {
        "benchmark": "encode_speed", "passages": len(texts), "max_length": args.max_length,
        "batch_size": args.batch_size, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "seconds": best, "warmup_seconds": warmup_s, "passages_per_s": {k: len(texts) / v for k, v in best.items()},
        "speedup_vs_st": {k: best["sentence-transformers"] / best[k] for k in names if k != "sentence-transformers"},
        "min_cosine_vs_st": {k: min_cos(vecs[k]) for k in names if k != "sentence-transformers"},
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "device": device_name(),
        "malloc_tuned": bool(os.environ.get("MALLOC_MMAP_THRESHOLD_")),
    }
    if "tandem" in systems:  # kept for earlier readers of this JSON
        out["speedup_tandem_vs_st"] = out["speedup_vs_st"]["tandem"]
    if args.quality:
        import tempfile

        from tandem.data import load_beir
        from tandem.eval.metrics import evaluate
        from tandem.index.dense import build_index, dense_search

        ds = load_beir(args.data, "test")
        out["quality"] = {}
        for name in args.quality.split(","):
            enc = systems[name]
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                index = build_index(ds.corpus, os.path.join(d, "idx"), enc, embeddings_dtype=None)
                secs = time.perf_counter() - t0
                run_ = dense_search(index, enc, ds.split_queries(), k=1000)
            out["quality"][name] = {**evaluate(run_, ds.qrels, ["nDCG@10", "RR@10", "R@100"]), "index_seconds": secs}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
