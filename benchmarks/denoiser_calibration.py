"""How well a demo's warmed-up re-ranker separates the calibration queries' labelled positives, by calibration pool.

    python benchmarks/denoiser_calibration.py runs/s12-lex-nfcorpus-s1 --data nfcorpus

Takes a recipe run (its `warmup/reranker`, the denoise stage's candidates and its held-out share), the calibration
queries as mining chooses them (held out, capped at 100 by the hash order), and prints, for each calibration pool,
the pairs, positives, pooled AUC, Platt fit and the mean within-query AUC:

- candidates: each calibration query's whole candidate list (the top-k the lists draw from), labelled positives
  there against the rest (`calibration_pool: candidates`, the default since session 13);
- positives: its first `--top` candidates plus up to 5 labelled positives from anywhere (the earlier way).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def auc(x: np.ndarray, y: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(x)) + 1
    n1, n0 = y.sum(), len(y) - y.sum()
    return float((ranks[y > 0].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def main() -> None:
    from tandem.data import load_beir, resolve_dataset
    from tandem.mining import fit_platt, heldout_qids, iter_lines
    from tandem.models.reranker import Reranker
    from tandem.recipe import saved_heldout_salt
    from tandem.train.lists import first_by_hash

    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a recipe output directory")
    ap.add_argument("--data", required=True)
    ap.add_argument("--top", type=int, default=3, help="candidates scored per query in the `positives` pool")
    args = ap.parse_args()
    run = Path(args.run)
    ds = load_beir(resolve_dataset(args.data), "train")
    recipe = json.loads((run / "recipe.json").read_text())
    held = sorted(heldout_qids([q for q in ds.qrels if q in ds.queries], recipe["heldout_fraction"],
                               saved_heldout_salt(recipe)))
    held = first_by_hash(held, 100, "calibration") if len(held) > 100 else held
    stage = "denoise" if (run / "denoise").exists() else "lists"
    cands = {r["qid"]: [c["pid"] for c in r["candidates"]]
             for r in iter_lines(run / stage / "lists.mine" / "candidates.jsonl")}
    reranker = Reranker.from_pretrained(str(run / "warmup" / "reranker"))
    print(f"{run}: {len(held)} calibration queries, re-ranker {run / 'warmup' / 'reranker'}\n")
    print("| pool | pairs | positives | AUC | Platt a, b | mean within-query AUC |\n|---|---|---|---|---|---|")
    for pool in ("candidates", "positives"):
        pairs, labels, qids = [], [], []
        for q in held:
            pos = [p for p, r in ds.qrels[q].items() if r > 0 and p in ds.corpus]
            pids = cands.get(q, [])
            if pool == "positives":
                top = pids[: args.top]
                pids = top + [p for p in pos if p not in top][:5]
            for pid in pids:
                pairs.append((ds.queries[q], ds.corpus.text(pid)))
                labels.append(1.0 if pid in pos else 0.0)
                qids.append(q)
        x, y, qa = reranker.predict(pairs, batch_size=32), np.asarray(labels), np.asarray(qids)
        a, b = fit_platt(x, y)
        per = [auc(x[qa == q], y[qa == q]) for q in set(qids)]
        per = [v for v in per if v == v]
        print(f"| {pool} | {len(y)} | {int(y.sum())} | {auc(x, y):.3f} | {a:.3f}, {b:.3f} | "
              f"{np.mean(per):.3f} ({len(per)} queries) |")


if __name__ == "__main__":
    main()
