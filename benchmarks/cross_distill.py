"""Grow a plain cross-encoder from the bi-encoder body by distilling a demo run's re-ranker into it (issue 19 item 1).

The demo's re-ranker (``gated``) is, as trained, the bi-encoder plus a bounded BM25 term: no query-passage
interaction, and sentence-transformers' ``CrossEncoder`` cannot load it. A standard sequence classifier over
``[CLS] q [SEP] p [SEP]`` with a new head starts knowing nothing (4,800 pairs of listwise CE on labels re-ranked
BM25's SciFact top-20 to 0.484, BM25 alone 0.662). This measures the cheaper signal the issue suggests: the
teacher's own list distributions over the training queries' candidates (every pair carries a graded target, not
one label in four), optionally with the new head first fitted by least squares to the teacher's within-list
scores (one forward pass over some pairs), then listwise KL(teacher || student) + the student's listwise CE on
the labelled positive, for a fixed wall time. Scored by re-ranking BM25's top-20 of the run's test queries, next
to the teacher on the same candidates, paired over queries.

    python benchmarks/cross_distill.py runs/s13f-scifact-s1 --minutes 8 --out runs/xd-sf-s1

Writes OUT/student (a CrossEncoder-loadable directory), OUT/student.trec, OUT/teacher.trec, OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch


def training_pairs(run: Path, list_size: int, max_queries: int):
    """(query, [positive, candidates...]) per non-held-out training query of the run's mined lists, in the
    lists' rank order, the positive first."""
    from tandem.data import load_beir
    from tandem.recipe import saved_heldout_salt
    from tandem.train.lists import heldout_qids, read_lists

    recipe = json.loads((run / "recipe.json").read_text())
    train = load_beir(recipe["data_dir"], "train")
    lists = read_lists(run / "lists" / "lists.jsonl", train.corpus, train.queries)
    held = heldout_qids([lst.qid for lst in lists], recipe["heldout_fraction"], saved_heldout_salt(recipe))
    out = []
    for lst in lists:
        if lst.qid in held or not lst.positives:
            continue
        pos = lst.positives[0]["pid"]
        cands = [e["pid"] for e in lst.negatives if e["pid"] != pos][: list_size - 1]
        if len(cands) == list_size - 1:
            out.append((lst.query or train.queries[lst.qid], [train.corpus.text(p) for p in [pos, *cands]]))
    random.Random(0).shuffle(out)
    return out[:max_queries] if max_queries else out, recipe


def last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]


def fit_head(student, lists, teacher_scores, n_lists: int, ridge: float = 1.0) -> float:
    """Least squares of the teacher's within-list centred scores on the head's centred inputs; returns the fit's
    R^2 on those lists."""
    head = last_linear(student.model)
    feats = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().float()))
    try:
        student.predict([(q, p) for q, ps in lists[:n_lists] for p in ps], batch_size=32)
    finally:
        hook.remove()
    # predict orders pairs by length: recover input order by scoring again is costly; instead fit per pair in the
    # order predict saw them, which the hook recorded batch by batch
    x = torch.cat(feats).numpy().astype(np.float64)
    pairs = [(q, p) for q, ps in lists[:n_lists] for p in ps]
    order = np.argsort([-(len(q) + len(p)) for q, p in pairs], kind="stable")
    xs = np.empty_like(x)
    xs[order] = x
    m = len(lists[0][1])
    y = teacher_scores[: n_lists * m].astype(np.float64).reshape(n_lists, m)
    xs = xs.reshape(n_lists, m, -1)
    xc, yc = xs - xs.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    a, b = xc.reshape(-1, xc.shape[-1]), yc.reshape(-1)
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
    r2 = 1 - ((a @ w - b) ** 2).sum() / (b ** 2).sum()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).float().view_as(head.weight))
        head.bias.zero_()
    return float(r2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a demo run directory (recipe.json, lists/, joint/reranker, bm25/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", default="joint", choices=["joint", "warmup"])
    ap.add_argument("--minutes", type=float, default=8.0, help="training wall time")
    ap.add_argument("--steps", type=int, default=0, help="train this many steps instead (wall time then unbounded)")
    ap.add_argument("--list-size", type=int, default=8)
    ap.add_argument("--lists-per-step", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--ce-weight", type=float, default=1.0)
    ap.add_argument("--head-fit", type=int, default=200, help="lists the head is first fitted on (0: a random head)")
    ap.add_argument("--max-queries", type=int, default=0)
    ap.add_argument("--k", type=int, default=20, help="BM25 depth re-ranked for the score")
    args = ap.parse_args()

    from tandem.data import load_beir, read_run, write_run
    from tandem.eval.metrics import evaluate_per_query
    from tandem.eval.stats import describe_test, paired_test
    from tandem.models.reranker import Reranker
    from tandem.rerank import rerank
    from tandem.train.joint import set_attention_dropout
    from tandem.utils import seed_everything

    seed_everything(1)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lists, recipe = training_pairs(run, args.list_size, args.max_queries)
    teacher = Reranker.from_pretrained(run / args.teacher / "reranker")
    flat = [(q, p) for q, ps in lists for p in ps]
    tscores = teacher.predict(flat, batch_size=32)
    teacher_s = time.perf_counter() - t0
    print(f"{len(lists)} training lists of {args.list_size}; teacher scored {len(flat)} pairs in {teacher_s:.0f} s",
          flush=True)

    model = None if recipe["model"] == "default" else recipe["model"]
    student = Reranker.from_pretrained(model, max_length=args.max_length, query_max_length=recipe["query_max_length"])
    assert not student.settings.trained
    set_attention_dropout(student.model, 0.0)  # the fused attention kernel
    r2 = fit_head(student, lists, tscores, min(args.head_fit, len(lists))) if args.head_fit else None
    if r2 is not None:
        print(f"head fitted on {min(args.head_fit, len(lists))} lists: R^2 {r2:.3f}", flush=True)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01)
    m, b = args.list_size, args.lists_per_step
    target = torch.from_numpy(tscores).float().view(len(lists), m)
    student.train()
    t1, step, seen, curve = time.perf_counter(), 0, 0, []
    order = list(range(len(lists)))
    while (step < args.steps) if args.steps else (time.perf_counter() - t1 < args.minutes * 60):
        if seen + b > len(order):
            random.Random(step).shuffle(order)
            seen = 0
        idx = order[seen : seen + b]
        seen += b
        qs = [lists[i][0] for i in idx for _ in range(m)]
        ps = [p for i in idx for p in lists[i][1]]
        lr = args.lr * min(1.0, (step + 1) / 20)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = student.score(qs, ps).float().view(b, m)
        t = target[idx]
        kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean")
        ce = torch.nn.functional.cross_entropy(s, torch.zeros(b, dtype=torch.long))
        loss = kl + args.ce_weight * ce
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        step += 1
        curve.append((step, float(kl), float(ce)))
        if step % 20 == 0:
            el = time.perf_counter() - t1
            k20 = np.mean([c[1] for c in curve[-20:]]), np.mean([c[2] for c in curve[-20:]])
            print(f"step {step}: {step * b * m / el:.1f} pairs/s, KL {k20[0]:.3f}, CE {k20[1]:.3f}", flush=True)
    train_s = time.perf_counter() - t1
    student.settings.trained = True
    student.save(out / "student")

    test = load_beir(recipe["data_dir"], recipe.get("eval_split", "test"))
    bm25 = read_run(run / "bm25" / "run.trec")
    scores, by_q = {}, {}
    t2 = time.perf_counter()
    for name, model_ in (("student", student), ("teacher", teacher)):
        path = out / f"{name}.trec"
        if not path.exists():
            write_run(path, rerank(bm25, test.queries, test.corpus, model_, args.k, progress=False))
        by_q[name] = {q: v["nDCG@10"] for q, v in evaluate_per_query(read_run(path), test.qrels, ["nDCG@10"]).items()}
    by_q["bm25"] = {q: v["nDCG@10"] for q, v in evaluate_per_query(bm25, test.qrels, ["nDCG@10"]).items()}
    for name, v in by_q.items():
        scores[name] = float(np.mean(list(v.values())))
    tests = {"student_vs_teacher": paired_test(by_q["student"], by_q["teacher"]),
             "student_vs_bm25": paired_test(by_q["student"], by_q["bm25"])}
    result = {"run": str(run), "args": vars(args), "lists": len(lists), "pairs_trained": step * b * m,
              "steps": step, "train_seconds": round(train_s, 1), "teacher_seconds": round(teacher_s, 1),
              "eval_seconds": round(time.perf_counter() - t2, 1), "head_fit_r2": r2,
              f"bm25_top{args.k}_reranked_nDCG@10": scores, "paired": tests, "curve": curve[::10]}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "args")}, indent=1))
    print(describe_test(tests["student_vs_teacher"], "student", "teacher"))


if __name__ == "__main__":
    main()
