"""How fair a sample is each seed's validation draw? (issue 18)

The recipe adopts a trained model only if it beats its start on validation queries: the dev split where there is
one (capped at ``val_max_queries``), else held-out training queries. Which queries those are is a draw by a hash of
the query id: one per seed (``heldout_draw: seed``, the default since session 19) or one for good (``fixed``, the
earlier behaviour). For each dataset this measures, over the pool a draw is taken from (all training queries with a
labelled positive, or the whole dev split), the training-free systems' per-query nDCG@10 (BM25 as the recipe builds
it, the zero-shot retriever at the demo's 128 passage tokens); then, for each draw of the demo config, its
zero-shot - BM25 and that number's percentile among random subsets of the pool of the same size. A fair draw sits
anywhere in the middle; SciFact's fixed draw sat at the 1.5th percentile (BENCHMARKS.md, session 18), so every
SciFact demo served BM25.

    python benchmarks/validation_draw.py --data scifact --data nfcorpus --seeds 1 2 3 4 5 \\
        --out runs/bench/validation_draw.json

``--index DIR`` (once per ``--data``) searches a recipe's zero-shot index (``zs-index/index``) instead of encoding
the corpus here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from bm25_stemming import _per_query, _zero_shot, add_data_args, data_and_indexes


def one_dataset(name: str, index_dir: str | None, seeds: list[int], n_random: int, rng) -> dict:
    from tandem.data import load_beir, resolve_dataset
    from tandem.index.bm25 import BM25, BM25Settings
    from tandem.index.fusion import fuse_runs
    from tandem.recipe import eval_split_of, load_recipe, shipped_config, validation_and_share

    directory = resolve_dataset(name)
    base = load_recipe(shipped_config("demo"), {"data": name})
    split = eval_split_of(base, directory)
    train = load_beir(directory, base.train_split)
    draws = {f"seed {s}": replace(base, seed=s, heldout_draw="seed") for s in seeds}
    draws["fixed"] = replace(base, heldout_draw="fixed")
    vals = {k: validation_and_share(c, directory, train, split)[1] for k, c in draws.items()}
    source = {v.source for v in vals.values()}
    if len(source) != 1 or "none" in source:
        raise SystemExit(f"{name}: validation sources {source}: expected one, held-out or a split")
    source = source.pop()
    pool_ds = train if source == "heldout" else load_beir(directory, source, corpus=train.corpus)
    reported = load_beir(directory, split, corpus=train.corpus)
    sets = {}
    for part, ds in (("pool", pool_ds), (split, reported)):
        sets[part] = ({q: ds.queries[q] for q, d in ds.qrels.items()
                       if q in ds.queries and any(r > 0 for r in d.values())}, ds.qrels)
    zs_runs = _zero_shot(name, train, [q for q, _ in sets.values()], index_dir)
    bm25_index = BM25(train.corpus, BM25Settings(stemmer=base.bm25_stemmer))
    diffs, out = {}, {"pool": f"{source} ({len(sets['pool'][0])} queries)", "reported": split, "draws": {}}
    for (part, (queries, qrels)), zs_run in zip(sets.items(), zs_runs):
        bm25_run = bm25_index.search(queries, 1000)
        per = {"zero_shot": _per_query(zs_run, qrels), "bm25": _per_query(bm25_run, qrels),
               "hybrid_zero_shot": _per_query(fuse_runs([bm25_run, zs_run]), qrels)}
        qids = list(queries)
        for system in ("zero_shot", "hybrid_zero_shot"):
            d = np.array([per[system].get(q, 0.0) - per["bm25"].get(q, 0.0) for q in qids])
            out[f"{system}_minus_bm25_{'pool' if part == 'pool' else 'reported'}"] = float(d.mean())
            if part == "pool":
                diffs[system] = d
        for system, pq in per.items():
            out[f"{system}_{'pool' if part == 'pool' else 'reported'}"] = float(np.mean([pq.get(q, 0.0) for q in qids]))
        if part == "pool":
            pool_qids = qids
    at = {q: i for i, q in enumerate(pool_qids)}
    for key, val in vals.items():
        idx = np.array([at[q] for q in val.queries if q in at])
        n = len(idx)
        # random subsets of the same size: the first n of a random permutation of the pool, n_random times
        subsets = np.argsort(rng.random((n_random, len(pool_qids))), axis=1)[:, :n]
        row = {"queries": n, "why": val.why}
        for system, d in diffs.items():
            means, mean = d[subsets].mean(axis=1), float(d[idx].mean())
            row[f"{system}_minus_bm25"] = mean
            row[f"{system}_percentile"] = float(100 * (means < mean).mean())
            row[f"{system}_random_5_95"] = [float(np.percentile(means, 5)), float(np.percentile(means, 95))]
        out["draws"][key] = row
    for system in diffs:
        seeded = [v[f"{system}_minus_bm25"] for k, v in out["draws"].items() if k != "fixed"]
        out[f"{system}_seed_draws_mean"], out[f"{system}_seed_draws_sd"] = (float(np.mean(seeded)),
                                                                           float(np.std(seeded, ddof=1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--random", type=int, default=10_000, help="random subsets per draw")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    given = data_and_indexes(ap, args)
    if len(args.seeds) < 2:
        ap.error("give two seeds at least (the spread of their draws is reported)")
    rng = np.random.default_rng(0)
    result = {name: one_dataset(name, ix, args.seeds, args.random, rng) for name, ix in given}
    for name, r in result.items():
        print(f"\n{name}: pool {r['pool']}, reported split {r['reported']}")
        for system in ("zero_shot", "hybrid_zero_shot"):
            label = system.replace("_", "-")
            print(f"  {label} - BM25: pool {r[f'{system}_minus_bm25_pool']:+.4f}, {r['reported']} "
                  f"{r[f'{system}_minus_bm25_reported']:+.4f}; seed draws mean {r[f'{system}_seed_draws_mean']:+.4f} "
                  f"(sd {r[f'{system}_seed_draws_sd']:.4f})")
            for key, d in r["draws"].items():
                lo, hi = d[f"{system}_random_5_95"]
                print(f"    {key:8s} {d['queries']:4d} queries: {d[f'{system}_minus_bm25']:+.4f}, percentile "
                      f"{d[f'{system}_percentile']:5.1f} (random 5-95%: {lo:+.4f} to {hi:+.4f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seeds": args.seeds, "results": result}, indent=1))
    tmp.replace(args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
