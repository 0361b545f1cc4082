"""Joint vs alone at equal budget: continue each demo run's retriever warm-up *alone* for the joint stage's steps.

The demo reports its retriever warm-up as `retriever-only`, but the joint retriever trained for the warm-up's
steps plus the joint stage's. This gives the retriever alone the same second stage: the same lists (the joint's,
denoised), shape, steps, learning rate, lengths, in-batch negatives, held-out split and seed, with the
retriever's listwise cross-entropy alone in place of joint's CE + KL from the re-ranker. Each result is indexed
and searched like the recipe's systems and scored on the test queries next to the run's own rows.

    python benchmarks/retriever_alone_budget.py runs/demo-b1 runs/demo-b2 runs/demo-b3 [--out runs/alone-budget]

Writes OUT/<run name>/{retriever,index,run.trec} and prints a Markdown table (mean +- std over the runs).
``--mode joint --set kl_weight=0.25`` instead re-runs the joint stage from the same warm-ups with changed
settings (a variant of joint training, against the same two rows); ``--rerank`` then also re-ranks the run's
own first stage (its rerank stage's first stage and depth) with the variant's joint re-ranker, for the pair row.
Each result is compared with the run's own row, paired over queries with the runs pooled (keys (run, qid)).

    python benchmarks/retriever_alone_budget.py runs/sf-s1 runs/sf-s2 --mode joint --rerank \
        --set kl_routing=official --set kl_reduction=mean --out runs/routing-official-mean
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from demo_seeds import per_query  # benchmarks/ is on the path when a script here runs
from summarize_runs import seeds_row


def continue_alone(run: Path, out: Path, mode: str = "retriever", sets: dict | None = None,
                   teacher_steps: int = 0, rerank_pair: bool = False) -> dict:
    from tandem.data import load_beir, read_run
    from tandem.eval.metrics import evaluate
    from tandem.recipe import index_and_search
    from tandem.train import train

    recipe = json.loads((run / "recipe.json").read_text())
    joint = json.loads((run / "joint" / "config.json").read_text())
    lists = run / ("denoise" if recipe.get("denoise") else "lists") / "lists.jsonl"
    keep = ("list_size", "batch_size", "max_steps", "lr_retriever", "weight_decay", "warmup_ratio", "max_grad_norm",
            "temperature", "in_batch_negatives", "query_max_length", "passage_max_length", "denoised_share",
            "pseudo_positive_prob", "shared_towers", "seed", "heldout_fraction", "precision")
    if mode == "joint":  # the joint stage's own settings, then the variant's
        keep = tuple(k for k in joint if k not in ("eval_every", "save_every", "device", "log_every"))
    overrides = {k: joint[k] for k in keep} | {"mode": mode, "eval_every": 0} | (sets or {})
    # the joint stage's own start: the retriever warm-up where the recipe adopted it, else the zero-shot model
    started = json.loads((run / "joint" / "done.json").read_text())["settings"]
    start, teacher = started["retriever"], Path(started["reranker"])
    if teacher_steps:  # a longer re-ranker warm-up: the run's warm-up settings and lists, more steps
        warm = json.loads((run / "warmup" / "config.json").read_text())
        drop = ("eval_every", "save_every", "device", "log_every", "max_steps")
        if not (out / "teacher" / "reranker").exists():
            train(recipe["data_dir"], out / "teacher", lists=run / "lists" / "lists.jsonl",
                  reranker=json.loads((run / "warmup" / "done.json").read_text())["settings"]["reranker"],
                  resume=True, progress=False,
                  overrides={k: v for k, v in warm.items() if k not in drop} | {"max_steps": teacher_steps,
                                                                                "eval_every": 0})
        teacher = out / "teacher" / "reranker"
    t0 = time.perf_counter()
    if not (out / "retriever").exists():
        train(recipe["data_dir"], out, lists=lists, retriever=start,
              reranker=str(teacher) if mode == "joint" else None,
              overrides=overrides, resume=True, progress=False)
    train_s = time.perf_counter() - t0
    test = load_beir(recipe["data_dir"], recipe.get("eval_split", "test"))
    if not (out / "run.trec").exists():
        index_and_search(out / "retriever", out, test.corpus, test.queries)
    scores = {ROW: evaluate(read_run(out / "run.trec"), test.qrels)}
    report = json.loads((run / "report.json").read_text())["systems"]
    for name in ("retriever-only", "joint-retriever", "joint-retriever+reranker"):
        if name in report:
            scores[name] = report[name]
    by_query = {ROW: per_query(out / "run.trec", test.qrels), "joint-retriever":
                per_query(run / "joint-index" / "run.trec", test.qrels)}
    if rerank_pair and mode == "joint":
        from tandem.data import write_run
        from tandem.models.reranker import Reranker
        from tandem.rerank import rerank

        rr = json.loads((run / "rerank" / "done.json").read_text())["settings"]
        first, k = rr["firsts"]["run"], rr["k"]["run"]
        if not (out / "pair.trec").exists():
            ce = Reranker.from_pretrained(out / "reranker")
            write_run(out / "pair.trec", rerank(read_run(run / first / "run.trec"), test.queries, test.corpus, ce, k,
                                                progress=False))
        scores[PAIR] = evaluate(read_run(out / "pair.trec"), test.qrels)
        by_query[PAIR] = per_query(out / "pair.trec", test.qrels)
        by_query["joint-retriever+reranker"] = per_query(run / "rerank" / "run.trec", test.qrels)
    return {"scores": scores, "train_s": train_s, "steps": joint["max_steps"], "per_query": by_query}


ROW = "this script's retriever"
PAIR = "this script's pair"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="recipe output directories (demo runs with retriever-warmup and joint)")
    ap.add_argument("--out", default="runs/alone-budget")
    ap.add_argument("--mode", default="retriever", choices=["retriever", "joint"],
                    help="retriever: the warm-up continued alone; joint: the joint stage again, with --set changes")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training setting to change")
    ap.add_argument("--rerank", action="store_true", help="--mode joint: also re-rank the run's first stage with the "
                                                           "variant's joint re-ranker (the pair row)")
    ap.add_argument("--teacher-steps", type=int, default=0,
                    help="--mode joint: first warm the re-ranker up for this many steps (the run's warm-up settings) "
                         "instead of starting from the run's own warm-up")
    args = ap.parse_args()
    sets = dict(kv.split("=", 1) for kv in args.set)
    results = [continue_alone(Path(r), Path(args.out) / Path(r).name, args.mode, sets, args.teacher_steps,
                              args.rerank) for r in args.runs]
    label = "alone at equal steps" if args.mode == "retriever" and not sets else \
        f"{args.mode} {' '.join(args.set)}".strip() + (f" teacher {args.teacher_steps} steps" if args.teacher_steps
                                                        else "")
    names = ["retriever-only", ROW, "joint-retriever", PAIR, "joint-retriever+reranker"]
    print(f"| system (n={len(results)}) | nDCG@10 | RR@10 | R@100 | per run nDCG@10 |\n|---|---|---|---|---|")
    for name in names:
        rows = [r["scores"][name] for r in results if name in r["scores"]]
        if rows:
            print(seeds_row({ROW: label, PAIR: f"{label}: pair"}.get(name, name), rows))
    from tandem.eval.stats import describe_test, paired_test

    print()
    for mine, theirs in ((ROW, "joint-retriever"), (PAIR, "joint-retriever+reranker")):
        a = {(i, q): v for i, r in enumerate(results) for q, v in r["per_query"].get(mine, {}).items()}
        b = {(i, q): v for i, r in enumerate(results) for q, v in r["per_query"].get(theirs, {}).items()}
        if a and b:
            print(f"- {describe_test(paired_test(a, b), f'{label} ({mine})', f'the runs own {theirs}')}")
    diffs = [r["scores"]["joint-retriever"]["nDCG@10"] - r["scores"][ROW]["nDCG@10"]
             for r in results if "joint-retriever" in r["scores"]]
    print(f"\njoint-retriever minus {label}, nDCG@10 per run: {', '.join(f'{d:+.4f}' for d in diffs)}")
    for path, r in zip(args.runs, results):
        print(f"{path}: {r['steps']} steps ({args.mode}) in {r['train_s']:.0f} s")


if __name__ == "__main__":
    main()
