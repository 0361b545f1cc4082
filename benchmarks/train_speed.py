"""Training throughput: tandem's retriever training against sentence-transformers' trainer, the same shape.

The shape is tandem's retriever warm-up and what sentence-transformers users run for it: ``--batch-size``
(query, positive, hard negative) triples a step, in-batch negatives (``MultipleNegativesRankingLoss`` there,
``in_batch_negatives`` here), passages cut at ``--max-length`` tokens, queries at 32 (sentence-transformers
pads queries in their own batch, so the cut does not bind on SciFact's short queries), AdamW, the same
embedded all-MiniLM-L6-v2 and the same triples (BM25's top-20 of SciFact's training queries: the labelled
positive and the first unlabelled candidate). Each system runs in its own fresh process, one after the
other, at the precision asked: ``bf16`` is sentence-transformers' ``bf16=True`` (autocast, fp32 weights) and
tandem's ``precision: bf16`` (the same). Seconds per step exclude model loading and the first
``--skip`` steps (allocator and kernel warm-up). Prints one JSON line per system and the ratio.

    pip install -e .[peers]
    python benchmarks/train_speed.py --precision bf16 --steps 12 --batch-size 32
    python benchmarks/train_speed.py --precision bf16 --set attention_dropout=0     # a tandem lever on top

``--set KEY=VALUE`` (repeatable) changes tandem's training settings only (the lever measured); without it both
train with the model's own dropout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_memory import bm25_lists  # BM25's top-20 lists; benchmarks/ is on the path when a script here runs


def run_tandem(args, lists: Path, work: Path) -> dict:
    import yaml

    from tandem.train.api import train

    overrides = dict(mode="retriever", list_size=2, batch_size=args.batch_size, passage_max_length=args.max_length,
                     query_max_length=32, in_batch_negatives=True, heldout_fraction=0.0, warmup_ratio=0.0,
                     precision=args.precision, max_steps=args.skip, lr_retriever=2e-5, seed=1,
                     **{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    # two runs, the first only to its warm-up steps, so that the second's loop time minus the first's is the
    # time of the measured steps alone
    first = train(args.data, work / "tandem-a", lists=str(lists), overrides=overrides, progress=False)
    full = train(args.data, work / "tandem-b", lists=str(lists), overrides={**overrides, "max_steps": args.steps},
                 progress=False)
    return {"seconds_per_step": (full.seconds - first.seconds) / (args.steps - args.skip)}


def run_st(args, lists: Path, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    from tandem.data import load_beir
    from tandem.models.hf import default_model_path
    from tandem.train import read_lists

    ds = load_beir(args.data, "train")
    rows = {"anchor": [], "positive": [], "negative": []}
    for tl in read_lists(lists, ds.corpus, ds.queries):
        if tl.negatives:
            rows["anchor"].append(ds.queries[tl.qid])
            rows["positive"].append(ds.corpus.text(tl.positives[0]["pid"]))
            rows["negative"].append(ds.corpus.text(tl.negatives[0]["pid"]))
    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.max_seq_length = args.max_length
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            times.append(time.perf_counter())

    targs = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=2e-5, warmup_steps=0, bf16=args.precision == "bf16", use_cpu=True, report_to="none",
        save_strategy="no", logging_strategy="no", dataloader_drop_last=True, seed=1)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=Dataset.from_dict(rows),
                                         loss=losses.MultipleNegativesRankingLoss(model), callbacks=[Clock()])
    torch.manual_seed(1)
    trainer.train()
    return {"seconds_per_step": (times[-1] - times[args.skip - 1]) / (args.steps - args.skip)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--work", default="")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE: a tandem training setting")
    ap.add_argument("--system", default="", help=argparse.SUPPRESS)  # child: run one system
    args = ap.parse_args()
    if not 0 < args.skip < args.steps:
        raise SystemExit("--skip must be between 0 and --steps")
    work = Path(args.work or tempfile.mkdtemp(prefix="tandem-train-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    lists = bm25_lists(args.data, work)  # the positive and the first negative of each are the triple
    if args.system:
        out = (run_tandem if args.system == "tandem" else run_st)(args, lists, work)
        print(json.dumps(out))
        return
    rows = {}
    for system in ("sentence-transformers", "tandem"):
        cmd = [sys.executable, __file__, "--system", system, "--work", str(work), "--data", args.data,
               "--precision", args.precision, "--steps", str(args.steps), "--skip", str(args.skip),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               *[x for kv in args.set for x in ("--set", kv)]]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        seqs = args.batch_size * 3  # query, positive, negative
        rows[system] = {"seconds_per_step": round(res["seconds_per_step"], 3),
                        "sequences_per_s": round(seqs / res["seconds_per_step"], 1)}
        print(json.dumps({"system": system, "precision": args.precision, **rows[system]}), flush=True)
    print(json.dumps({"benchmark": "train_speed", "precision": args.precision, "batch_size": args.batch_size,
                      "max_length": args.max_length, "steps": args.steps, "skip": args.skip, "tandem_set": args.set,
                      "tandem_vs_st": round(rows["sentence-transformers"]["seconds_per_step"]
                                            / rows["tandem"]["seconds_per_step"], 3)}))


if __name__ == "__main__":
    main()
