"""What the teacher knows that the retriever does not: its lead at the same passage length, and how much of
its scoring is query-passage interaction (issue 19).

Every system re-scores the same candidates, the first stage's top-k of each evaluated query (the recipe's own
first stage for its re-ranker: the run's rerank stage), so differences are the scorers' alone:

- the retriever the joint stage started from, scoring with passages cut at 128 and at 256 tokens;
- the run's re-ranker (the joint one by default) as trained (its pair length), and with each passage cut to the
  126 word pieces the retriever sees at 128 tokens (the text up to that piece's end), and both again with
  cross-segment attention removed (a gated re-ranker's gates shut: the query and passage segments then never see
  each other).

    python benchmarks/teacher_lead.py runs/sf-s1 runs/sf-s2 [--reranker warmup] [--k 10]

Prints nDCG@10 per system (mean over runs) and paired tests over queries, runs pooled: teacher minus
retriever at the same length (the lead the KL can carry over), at their own lengths, and the teacher minus
itself without interaction; and the interaction share: the mean absolute change of a logit, and of its
within-list softmax probability, when cross-segment attention is removed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _scores_retriever(path: str | None, length: int, pairs: list[tuple[str, str]], query_length: int) -> list[float]:
    from tandem.models.retriever import Retriever

    r = Retriever.from_pretrained(path, query_max_length=query_length, passage_max_length=length).eval()
    queries = sorted({q for q, _ in pairs})
    passages = sorted({p for _, p in pairs})
    qv = dict(zip(queries, np.asarray(r.query_tower().encode(queries, batch_size=64), dtype=np.float32)))
    pv = dict(zip(passages, np.asarray(r.passage_tower().encode(passages, batch_size=64), dtype=np.float32)))
    return [float(qv[q] @ pv[p]) for q, p in pairs]


def cut(texts: list[str], tokenizer, pieces: int) -> list[str]:
    """Each text up to the end of its ``pieces``-th word piece: what an encoder at ``pieces + 2`` tokens reads."""
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=pieces, return_offsets_mapping=True)
    return [t[: offs[-1][1]] if offs else t for t, offs in zip(texts, enc["offset_mapping"])]


def _scores_reranker(path: Path, pairs: list[tuple[str, str]], passage_tokens: int | None, no_cross: bool):
    import torch

    from tandem.models.reranker import Reranker

    ce = Reranker.from_pretrained(path)
    if passage_tokens is not None:  # each passage cut to what the retriever reads at this length
        texts = cut([p for _, p in pairs], ce.tokenizer, passage_tokens - 2)
        pairs = [(q, t) for (q, _), t in zip(pairs, texts)]
    if no_cross:
        if not hasattr(ce, "gate"):
            return None  # a plain cross-encoder has no segment gate to shut
        with torch.no_grad():
            ce.gate.fill_(-1e4)
    return [float(s) for s in ce.predict(pairs, batch_size=32)]


def measure(run: Path, which: str, k: int) -> dict:
    from tandem.data import load_beir, read_run
    from tandem.data.trec import ranked
    from tandem.eval.metrics import evaluate_per_query

    recipe = json.loads((run / "recipe.json").read_text())
    ds = load_beir(recipe["data_dir"], recipe.get("eval_split", "test"))
    rr = json.loads((run / "rerank" / "done.json").read_text())["settings"]
    first = read_run(run / rr["firsts"]["run"] / "run.trec")
    keys = [(q, p) for q in ds.split_queries() if q in first for p, _ in ranked(first[q], k)]
    pairs = [(ds.queries[q], ds.corpus.text(p)) for q, p in keys]
    start = json.loads((run / "joint" / "done.json").read_text())["settings"]["retriever"]
    reranker = run / which / "reranker"
    q_len = recipe.get("query_max_length", 32)
    scores = {"retriever @128": _scores_retriever(start, 128, pairs, q_len),
              "retriever @256": _scores_retriever(start, 256, pairs, q_len),
              "teacher as trained": _scores_reranker(reranker, pairs, None, False),
              "teacher @128": _scores_reranker(reranker, pairs, 128, False),
              "teacher as trained, no cross attention": _scores_reranker(reranker, pairs, None, True),
              "teacher @128, no cross attention": _scores_reranker(reranker, pairs, 128, True)}
    out = {"per_query": {}, "runs": {}, "interaction": {}}
    for name, s in scores.items():
        if s is None:
            continue
        run_ = {}
        for (q, p), v in zip(keys, s):
            run_.setdefault(q, {})[p] = v
        out["runs"][name] = run_
        out["per_query"][name] = {q: v["nDCG@10"] for q, v in evaluate_per_query(run_, ds.qrels, ["nDCG@10"]).items()}
    for length in ("as trained", "@128"):
        a, b = scores[f"teacher {length}"], scores[f"teacher {length}, no cross attention"]
        if b is None:
            continue
        a, b = np.asarray(a), np.asarray(b)
        n_q = len(keys) // k if len(keys) % k == 0 else None
        entry = {"mean_abs_logit_change": float(np.abs(a - b).mean()), "logit_spread": float(a.std())}
        if n_q:  # within-list probabilities (lists of k)
            pa = np.exp(a.reshape(n_q, k) - a.reshape(n_q, k).max(1, keepdims=True))
            pb = np.exp(b.reshape(n_q, k) - b.reshape(n_q, k).max(1, keepdims=True))
            entry["mean_abs_prob_change"] = float(np.abs(pa / pa.sum(1, keepdims=True)
                                                         - pb / pb.sum(1, keepdims=True)).mean())
        out["interaction"][length] = entry
    return out


def main() -> None:
    from tandem.eval.stats import describe_test, paired_test

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="recipe output directories")
    ap.add_argument("--reranker", default="joint", choices=["joint", "warmup"], help="which stage's re-ranker")
    ap.add_argument("--k", type=int, default=10, help="candidates per query (the first stage's top-k)")
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args()
    results = [measure(Path(r), args.reranker, args.k) for r in args.runs]
    names = list(results[0]["per_query"])
    print(f"| scorer over the first stage's top-{args.k} (n={len(results)} runs) | nDCG@10 | per run |\n|---|---|---|")
    for name in names:
        per = [float(np.mean(list(r["per_query"][name].values()))) for r in results]
        print(f"| {name} | {np.mean(per):.4f} | {' / '.join(f'{v:.4f}' for v in per)} |")

    def pooled(name):
        return {(i, q): v for i, r in enumerate(results) for q, v in r["per_query"][name].items()}

    print()
    for a, b in (("teacher @128", "retriever @128"), ("teacher as trained", "retriever @256"),
                 ("teacher as trained", "retriever @128"), ("retriever @256", "retriever @128"),
                 ("teacher as trained", "teacher as trained, no cross attention"),
                 ("teacher @128", "teacher @128, no cross attention")):
        if a in names and b in names:
            print(f"- {describe_test(paired_test(pooled(a), pooled(b)), a, b)}")
    for i, (path, r) in enumerate(zip(args.runs, results)):
        for length, e in r["interaction"].items():
            print(f"- {path}: cross attention removed, teacher {length}: mean |logit change| "
                  f"{e['mean_abs_logit_change']:.4f} (logit std {e['logit_spread']:.3f}), mean |probability change| "
                  f"{e.get('mean_abs_prob_change', float('nan')):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "runs"} for r in results],
                                              indent=1))


if __name__ == "__main__":
    main()
