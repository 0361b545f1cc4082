"""Train on SciFact lists from the zero-shot retriever's top-n, then evaluate on test.

One run per call (mode + settings), so variants and seeds can be run and compared:

    python benchmarks/train_scifact.py --mode retriever --max-steps 40 --seed 1 --out runs/exp/retriever-s1
    python benchmarks/train_scifact.py --mode joint --max-steps 40 --seed 1 --out runs/exp/joint-s1 \
        --set allow_untrained_reranker=true

Lists: the train queries' top-``--top-n`` from a zero-shot index (built once and cached under
``--cache``), positives from qrels/train.tsv; 10% of the lists are held out (fixed seed) for the
held-out list metrics. Test queries are only used for the final numbers. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--cache", default="runs/exp/cache")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="joint")
    ap.add_argument("--retriever", default=None)
    ap.add_argument("--reranker", default=None)
    ap.add_argument("--top-n", type=int, default=50)
    ap.add_argument("--lists", default=None, help="train on these lists (e.g. from tandem mine) instead of the "
                                                  "zero-shot top-n")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rerank-k", type=int, default=0, help="also re-rank the trained retriever's top-k on test")
    ap.add_argument("--rerank-on", default="bm25,zero-shot,own-retriever",
                    help="first stages whose top-k the trained re-ranker re-scores (comma-separated)")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value training settings")
    ap.add_argument("--train-precision", default="", help="training precision (auto, fp32, bf16; default: the "
                                                           "config's auto); inference follows $TANDEM_PRECISION")
    args = ap.parse_args()

    from tandem.data import load_beir, read_run, write_run
    from tandem.eval.metrics import evaluate
    from tandem.index.dense import build_index, dense_search, load_index_and_encoder
    from tandem.models.encoder import Encoder
    from tandem.models.retriever import Retriever
    from tandem.train import lists_from_run, train, write_lists

    cache = Path(args.cache)
    train_ds = load_beir(args.data, "train")
    test_ds = load_beir(args.data, "test", corpus=train_ds.corpus)
    lists_path = Path(args.lists) if args.lists else cache / f"zs-top{args.top_n}.jsonl"
    if not lists_path.exists():
        idx_dir = cache / "zs-index"
        if not (idx_dir / "manifest.json").exists():
            build_index(train_ds.corpus, idx_dir, Encoder.from_pretrained(None), progress=True)
        index, enc = load_index_and_encoder(idx_dir)
        run = dense_search(index, enc, train_ds.split_queries(), k=args.top_n + 10)
        write_lists(lists_path, lists_from_run(run, train_ds.qrels, train_ds.corpus, args.top_n))
    settings = ["list_size=8", "batch_size=8", "query_max_length=32", "passage_max_length=128",
                "reranker_max_length=160", f"seed={args.seed}", f"max_steps={args.max_steps}",
                "heldout_fraction=0.1", "eval_every=10", f"mode={args.mode}",
                *([f"precision={args.train_precision}"] if args.train_precision else []), *args.set]
    t0 = time.perf_counter()
    result = train(args.data, args.out, lists=lists_path, retriever=args.retriever, reranker=args.reranker,
                   overrides=settings, progress=True)
    train_s = time.perf_counter() - t0
    out: dict = {"mode": args.mode, "lists": str(lists_path), "settings": settings, "train_seconds": train_s,
                 "steps": result.steps,
                 "sequences_per_s": result.sequences_per_s, "heldout": result.heldout,
                 "final_losses": result.final_losses}
    if (Path(args.out) / "retriever").exists():
        t1 = time.perf_counter()
        r = Retriever.from_pretrained(Path(args.out) / "retriever")
        build_index(train_ds.corpus, Path(args.out) / "index", r.passage_tower(), progress=True)
        index, enc = load_index_and_encoder(Path(args.out) / "index")
        run = dense_search(index, enc, test_ds.split_queries(), k=1000)
        write_run(Path(args.out) / "test.trec", run)
        out["test"] = evaluate(run, test_ds.qrels)
        out["index_seconds"] = time.perf_counter() - t1
    if args.rerank_k and (Path(args.out) / "reranker").exists():
        from tandem.index.bm25 import bm25_search
        from tandem.models.reranker import Reranker
        from tandem.rerank import rerank

        ce = Reranker.from_pretrained(Path(args.out) / "reranker")
        zs_index, zs_enc = load_index_and_encoder(cache / "zs-index")
        firsts = {"bm25": bm25_search(test_ds.corpus, test_ds.split_queries(), k=args.rerank_k),
                  "zero-shot": dense_search(zs_index, zs_enc, test_ds.split_queries(), k=args.rerank_k)}
        if "test" in out:
            firsts["own-retriever"] = read_run(Path(args.out) / "test.trec")
        out["rerank"] = {}
        for name, first in firsts.items():
            if name not in args.rerank_on.split(","):
                continue
            t1 = time.perf_counter()
            rr = rerank(first, test_ds.queries, test_ds.corpus, ce, args.rerank_k)
            secs = time.perf_counter() - t1
            out["rerank"][name] = {"first_stage": evaluate(first, test_ds.qrels, ["nDCG@10", "RR@10"]),
                                   "reranked": evaluate(rr, test_ds.qrels, ["nDCG@10", "RR@10"]),
                                   "seconds": secs,
                                   "pairs_per_s": sum(min(args.rerank_k, len(v)) for v in first.values()) / secs}
    print(json.dumps(out, indent=2))
    (Path(args.out) / "result.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
