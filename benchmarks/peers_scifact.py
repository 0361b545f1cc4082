"""Peers on SciFact, side by side with tandem: sentence-transformers fine-tuning on the same data.

Two peers, trained the way sentence-transformers users do, from the same embedded all-MiniLM-L6-v2:

- ``st-mnrl``: ``SentenceTransformer`` + ``MultipleNegativesRankingLoss`` on (query, positive, one hard
  negative) triples (in-batch negatives, no duplicate texts per batch), then indexed and searched.
- ``st-cross``: ``CrossEncoder`` (new one-logit head) + ``BinaryCrossEntropyLoss`` on the same
  positives and hard negatives, then re-ranking the top-k of BM25 and of the ``st-mnrl`` retriever.

The triples come from the same training lists tandem trains on (``--lists``, default the zero-shot
top-50 cached by ``benchmarks/train_scifact.py``): per query one labelled positive and one negative
drawn (seeded) from the list's top ``--neg-depth`` candidates. The 10% of training queries that
tandem holds out are held out here too. Test queries only give the final numbers.

    pip install -e .[peers]
    python benchmarks/peers_scifact.py --out runs/peers [--max-length 128] [--epochs 1] [--max-steps N]

``--max-steps`` makes a run with as many optimiser steps as a tandem run (equal steps); the
printed ``train_seconds`` compares wall time. Prints and writes ``OUT/result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path


def triples(lists_path: Path, corpus, queries, heldout_fraction: float, depth: int, seed: int):
    from tandem.train.lists import heldout_indices, read_lists

    lists = read_lists(lists_path, corpus, queries)
    held = set(heldout_indices([lst.qid for lst in lists], heldout_fraction))
    rng = random.Random(seed)
    out = []
    for i, lst in enumerate(lists):
        if i in held:
            continue
        labelled = [e["pid"] for e in lst.positives if not e.get("pseudo")]
        negs = [e["pid"] for e in lst.negatives if e.get("source", "undenoised") != "denoised"][:depth]
        out.append((queries[lst.qid], corpus.text(rng.choice(labelled)), corpus.text(rng.choice(negs))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--lists", default="runs/exp/cache/zs-top50.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-length", type=int, default=128, help="passage tokens (retriever); pairs get +32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cross-batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=-1, help="optimiser steps of each peer (-1: --epochs)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--neg-depth", type=int, default=20, help="the hard negative is drawn from the list's top-k")
    ap.add_argument("--rerank-k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rerank-on", default="bm25", help="first stages the CrossEncoder re-ranks: bm25, st-mnrl")
    ap.add_argument("--skip", default="", help="comma-separated peers to skip: st-mnrl, st-cross")
    args = ap.parse_args()

    from datasets import Dataset as HFDataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    from tandem.data import load_beir, write_run
    from tandem.eval.metrics import evaluate
    from tandem.index.bm25 import bm25_search
    from tandem.index.faiss_index import DenseIndex
    from tandem.models.hf import default_model_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ds = load_beir(args.data, "train")
    test_ds = load_beir(args.data, "test", corpus=train_ds.corpus)
    tq = test_ds.split_queries()
    data = triples(Path(args.lists), train_ds.corpus, train_ds.queries, 0.1, args.neg_depth, args.seed)
    base = str(default_model_path())
    result: dict = {"settings": vars(args), "triples": len(data), "base_model": base, "systems": {}}
    common = dict(num_train_epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.lr, warmup_ratio=0.1,
                  save_strategy="no", logging_steps=10, report_to=[], seed=args.seed, dataloader_drop_last=False,
                  use_cpu=True)
    skip = set(args.skip.split(","))

    mnrl_run = None
    if "st-mnrl" not in skip:
        model = SentenceTransformer(base, device="cpu")
        model.max_seq_length = args.max_length
        train = HFDataset.from_dict({"anchor": [t[0] for t in data], "positive": [t[1] for t in data],
                                     "negative": [t[2] for t in data]})
        trainer = SentenceTransformerTrainer(
            model=model, train_dataset=train, loss=MultipleNegativesRankingLoss(model),
            args=SentenceTransformerTrainingArguments(output_dir=str(out / "st-mnrl-tmp"),
                                                      per_device_train_batch_size=args.batch_size,
                                                      batch_sampler=BatchSamplers.NO_DUPLICATES, **common))
        t0 = time.perf_counter()
        stats = trainer.train()
        train_s = time.perf_counter() - t0
        model.save(str(out / "st-mnrl"))
        t0 = time.perf_counter()
        pv = model.encode(list(train_ds.corpus), batch_size=32, normalize_embeddings=False, convert_to_numpy=True)
        index = DenseIndex.build(pv, train_ds.corpus.ids, {"model": "st-mnrl"})
        qids = list(tq)
        qv = model.encode([tq[q] for q in qids], batch_size=64, convert_to_numpy=True)
        mnrl_run = index.search(qids, qv, 1000)
        index_s = time.perf_counter() - t0
        write_run(out / "st-mnrl.trec", mnrl_run)
        result["systems"]["st-mnrl"] = {**evaluate(mnrl_run, test_ds.qrels), "train_seconds": train_s,
                                        "index_seconds": index_s, "steps": stats.global_step}
        print(json.dumps(result["systems"]["st-mnrl"]), flush=True)

    if "st-cross" not in skip:
        ce = CrossEncoder(base, num_labels=1, max_length=args.max_length + 32, device="cpu")
        pairs = HFDataset.from_dict({"query": [t[0] for t in data for _ in (0, 1)],
                                     "passage": [p for t in data for p in (t[1], t[2])],
                                     "label": [float(l) for _ in data for l in (1, 0)]})
        trainer = CrossEncoderTrainer(
            model=ce, train_dataset=pairs, loss=BinaryCrossEntropyLoss(ce),
            args=CrossEncoderTrainingArguments(output_dir=str(out / "st-cross-tmp"),
                                               per_device_train_batch_size=args.cross_batch_size, **common))
        t0 = time.perf_counter()
        stats = trainer.train()
        train_s = time.perf_counter() - t0
        ce.save(str(out / "st-cross"))
        wanted = args.rerank_on.split(",")
        firsts = {"bm25": bm25_search(train_ds.corpus, tq, k=1000)} if "bm25" in wanted else {}
        if mnrl_run is not None and "st-mnrl" in wanted:
            firsts["st-mnrl"] = mnrl_run
        for name, first in firsts.items():
            t0 = time.perf_counter()
            reranked, n_pairs = {}, 0
            for qid, docs in first.items():
                top = sorted(docs.items(), key=lambda kv: -kv[1])[: args.rerank_k]
                scores = ce.predict([(tq[qid], train_ds.corpus.text(pid)) for pid, _ in top], batch_size=32)
                reranked[qid] = {pid: float(s) for (pid, _), s in zip(top, scores)}
                n_pairs += len(top)
            secs = time.perf_counter() - t0
            write_run(out / f"st-cross-on-{name}.trec", reranked)
            first_top = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[: args.rerank_k]) for q, d in first.items()}
            result["systems"][f"{name}+st-cross"] = {
                **evaluate(reranked, test_ds.qrels, ["nDCG@10", "RR@10"]), "train_seconds": train_s,
                "rerank_seconds": secs, "pairs_per_s": n_pairs / secs, "steps": stats.global_step,
                "first_stage": evaluate(first_top, test_ds.qrels, ["nDCG@10", "RR@10"])}
            print(json.dumps({f"{name}+st-cross": result["systems"][f"{name}+st-cross"]}), flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["systems"], indent=2))


if __name__ == "__main__":
    main()
