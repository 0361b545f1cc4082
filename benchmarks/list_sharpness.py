"""How much the teacher's list distributions can teach the retriever: their sharpness against the student's, on
the lists joint training draws (issue 19: which factor keeps the joint retriever level with the one trained alone).

The joint stage's first lists (epoch 0, its seed, its sampler settings) are scored by the re-ranker joint training
starts from (the warm-up) and by the retriever it starts from (scores / tau). Per list: each distribution's entropy,
the probability it puts on the positive and how often the positive is its top; the KL the joint stage minimises,
KL(P_teacher || P_student), at the teacher's own scale and with the teacher's logits divided by each ``--teacher-tau``
(a distillation temperature); and how much of that KL is the positive's share (a teacher that is one-hot on the
positive teaches what the retriever's own CE already says).

    python benchmarks/list_sharpness.py runs/nf-s1 [--lists 256] [--teacher-tau 1 2 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from teacher_lead import _scores_retriever  # benchmarks/ is on the path when a script here runs


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _stats(log_p: np.ndarray) -> dict[str, float]:
    p = np.exp(log_p)
    return {"entropy": float(-(p * log_p).sum(1).mean()), "p_positive": float(p[:, 0].mean()),
            "positive_top": float((p.argmax(1) == 0).mean())}


def measure(run: Path, n_lists: int, taus: list[float]) -> dict:
    from tandem.data import load_beir
    from tandem.models.reranker import Reranker
    from tandem.train.lists import ListSampler, read_lists

    recipe = json.loads((run / "recipe.json").read_text())
    joint = json.loads((run / "joint" / "config.json").read_text())
    done = json.loads((run / "joint" / "done.json").read_text())["settings"]
    ds = load_beir(recipe["data_dir"], recipe.get("train_split", "train"))
    lists_file = run / done.get("lists", "denoise") / "lists.jsonl"
    lists = read_lists(lists_file, ds.corpus, ds.queries)
    sampler = ListSampler(lists, ds.queries, joint["list_size"] - 1, seed=joint["seed"],
                          denoised_share=joint["denoised_share"], pseudo_positive_prob=joint["pseudo_positive_prob"],
                          retrieved_positives=joint.get("positive_pool", "all") == "retrieved")
    groups = [sampler.group(0, int(i)) for i in sampler.order(0)[:n_lists]]
    g = joint["list_size"]
    pairs = [(grp.query, ds.corpus.text(pid)) for grp in groups for pid in grp.pids]
    teacher = np.asarray(Reranker.from_pretrained(run / "warmup" / "reranker").predict(pairs, batch_size=32),
                         dtype=np.float64).reshape(-1, g)
    start = done["retriever"]  # None: the default model; a path as the demo was given it (relative to where it ran)
    if start and not Path(start).is_absolute() and not Path(start).exists() and (run.parent / start).exists():
        start = str(run.parent / start)
    student = np.asarray(_scores_retriever(start, recipe.get("max_length", 128), pairs,
                                           recipe.get("query_max_length", 32)), dtype=np.float64).reshape(-1, g)
    log_s = _log_softmax(student / joint["temperature"])
    out = {"run": str(run), "lists": len(groups), "list_size": g, "student": _stats(log_s),
           "student_tau": joint["temperature"], "teacher": {}, "logit_std_within_list": float(teacher.std(1).mean())}
    for tau in taus:
        log_t = _log_softmax(teacher / tau)
        p_t = np.exp(log_t)
        kl = (p_t * (log_t - log_s)).sum(1)
        # the KL against a one-hot teacher on the positive is the student's list CE: what the KL adds beyond it
        ce = -log_s[:, 0]
        out["teacher"][tau] = {**_stats(log_t), "kl": float(kl.mean()), "student_ce": float(ce.mean()),
                               "kl_minus_ce": float((kl - ce).mean())}
    # by the positive's judgement: NFCorpus grades 1 (indirectly relevant) and 2; a pseudo-positive has none
    # and by whether it is among the query's candidates (the first stage's top_n the negatives come from)
    cands = {}
    cand_file = run / "lists" / "lists.mine" / "candidates.jsonl"
    if cand_file.exists():
        for line in cand_file.read_text().splitlines():
            e = json.loads(line)
            if "qid" in e:
                cands[e["qid"]] = {c["pid"] for c in e["candidates"]}
    grades = np.array([str(ds.qrels.get(grp.qid, {}).get(grp.pids[0], "pseudo"))
                       + (", retrieved" if grp.pids[0] in cands.get(grp.qid, ()) else ", not retrieved")
                       for grp in groups])
    log_t = _log_softmax(teacher)
    out["by_grade"] = {gr: {"lists": int((grades == gr).sum()), "teacher_positive_top": float(
        (log_t[grades == gr].argmax(1) == 0).mean()), "student_positive_top": float(
        (log_s[grades == gr].argmax(1) == 0).mean())} for gr in sorted(set(grades))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="recipe output directories (with joint/ and warmup/)")
    ap.add_argument("--lists", type=int, default=256, help="the joint stage's first lists to score")
    ap.add_argument("--teacher-tau", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args()
    results = [measure(Path(r), args.lists, args.teacher_tau) for r in args.runs]
    print("| run | distribution | entropy (nats) | P(positive) | positive on top | KL(teacher \\|\\| student) |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        s = r["student"]
        print(f"| {r['run']} | retriever (scores / {r['student_tau']}) | {s['entropy']:.3f} | {s['p_positive']:.3f} "
              f"| {s['positive_top']:.3f} | - |")
        for tau, t in r["teacher"].items():
            print(f"| | teacher (logits / {tau:g}) | {t['entropy']:.3f} | {t['p_positive']:.3f} | "
                  f"{t['positive_top']:.3f} | {t['kl']:.3f} (student list CE {t['student_ce']:.3f}) |")
        print(f"| | (max entropy ln {r['list_size']} = {np.log(r['list_size']):.3f}; teacher logit std within a "
              f"list {r['logit_std_within_list']:.3f}; {r['lists']} lists) | | | | |")
        print("- the positive on top, by its grade: " + "; ".join(
            f"grade {gr} ({v['lists']} lists): teacher {v['teacher_positive_top']:.3f}, retriever "
            f"{v['student_positive_top']:.3f}" for gr, v in r["by_grade"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
