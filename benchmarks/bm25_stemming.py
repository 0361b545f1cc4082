"""BM25 with and without Snowball English stemming, alone and fused with the zero-shot retriever (issue 18).

For each dataset: the reported split (SciFact test, NFCorpus dev), the recipe's validation queries (the demo
config's: the dev split where it is not the reported one, else the held-out training queries, the ones the
recipe chooses settings on) and all training queries (no training-free system has seen any of them, so for
BM25 and the zero-shot model each is a held-out query). BM25 at a few (k1, b), each with and without
stemming; the hybrid is BM25 + the zero-shot retriever by reciprocal rank fusion (k = 60), the recipe's
`hybrid-zero-shot`. Paired randomisation tests over queries, stemmed minus unstemmed at the default (k1, b),
per dataset and pooled over the two datasets' validation queries and over their training queries (the
decision: choose on held-out queries, never on a reported split).

    python benchmarks/bm25_stemming.py --data scifact --index runs/sf-s1/zs-index/index \
        --data nfcorpus --index runs/nf-s1/zs-index/index --out runs/bench/bm25_stemming.json

`--index DIR` searches a recipe's zero-shot index; without it the zero-shot model encodes the corpus here at
the demo's 128 passage tokens (and 32 query tokens).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SETTINGS = [(1.5, 0.75), (1.2, 0.75), (0.9, 0.4)]  # the default first


def _per_query(run, qrels) -> dict[str, float]:
    from tandem.eval.metrics import evaluate_per_query

    return {q: m["nDCG@10"] for q, m in evaluate_per_query(run, qrels, ["nDCG@10"]).items()}


def _zero_shot(name: str, ds, query_sets: list[dict], index_dir: str | None) -> list[dict]:
    """The zero-shot retriever's top-1000 for each query set: from a built index (a recipe's ``zs-index/index``)
    or encoding the corpus here at the demo's 128 passage tokens."""
    import tempfile

    from tandem.index.dense import build_index, dense_search, load_index_and_encoder
    from tandem.models.retriever import Retriever

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if not index_dir:
            index_dir = str(Path(tmp) / "index")
            r = Retriever.from_pretrained(None, query_max_length=32, passage_max_length=128)
            build_index(ds.corpus, index_dir, r.passage_tower())
        index, encoder = load_index_and_encoder(index_dir)
        runs = [dense_search(index, encoder, q, 1000) for q in query_sets]
    print(f"{name}: zero-shot runs in {time.perf_counter() - t:.0f} s", flush=True)
    return runs


def one_dataset(name: str, index_dir: str | None) -> dict:
    from tandem.data import load_beir, resolve_dataset
    from tandem.index.bm25 import BM25, BM25Settings
    from tandem.index.fusion import fuse_runs
    from tandem.recipe import choose_validation, eval_split_of, load_recipe, shipped_config

    directory = resolve_dataset(name)
    cfg = load_recipe(shipped_config("demo"), {"data": name})
    split = eval_split_of(cfg, directory)
    train = load_beir(directory, cfg.train_split)
    ds = load_beir(directory, split, corpus=train.corpus)
    val = choose_validation(cfg, directory, train, split)
    # the training-free systems have seen no training query: every one of them is held out for them
    all_train = {q: train.queries[q] for q in train.qrels if q in train.queries}
    zs_eval, zs_val, zs_train = _zero_shot(name, ds, [ds.split_queries(), val.queries, all_train], index_dir)
    where = {"eval": (ds.split_queries(), ds.qrels, zs_eval), "val": (val.queries, val.qrels, zs_val),
             "train": (all_train, train.qrels, zs_train)}
    out = {"split": split, "validation": val.why, "systems": {}, "per_query": {}}
    for stem in ("english", None):
        for k1, b in SETTINGS:
            t = time.perf_counter()
            bm25 = BM25(train.corpus, BM25Settings(k1=k1, b=b, stemmer=stem))
            tag = f"{'stemmed' if stem else 'unstemmed'} k1={k1} b={b}"
            row = {}
            for part, (queries, qrels, zs) in where.items():
                run = bm25.search(queries, 1000)
                for system, r in (("bm25", run), ("hybrid", fuse_runs([run, zs]))):
                    pq = _per_query(r, qrels)
                    row[f"{system} {part}"] = float(np.mean(list(pq.values())))
                    out["per_query"][f"{tag} {system} {part}"] = pq
            out["systems"][tag] = row
            print(f"{name} {tag}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items())
                  + f" ({time.perf_counter() - t:.1f} s)", flush=True)
    for part in where:
        out["per_query"][f"zero-shot {part}"] = _per_query(where[part][2], where[part][1])
    return out


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """``--data`` (repeatable) and ``--index`` (a zero-shot index per ``--data``, or none)."""
    ap.add_argument("--data", action="append", required=True, help="a dataset name or directory (repeatable)")
    ap.add_argument("--index", action="append", default=None,
                    help="a zero-shot index (a recipe's zs-index/index), one per --data in order (else encoded here)")


def data_and_indexes(ap: argparse.ArgumentParser, args) -> list[tuple[str, str | None]]:
    given = args.index or [None] * len(args.data)
    if len(given) != len(args.data):
        ap.error("give --index once per --data, or not at all")
    return list(zip(args.data, given))


def main() -> None:
    from tandem.eval.stats import paired_test

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    given = data_and_indexes(ap, args)
    result, tests, pooled = {}, {}, {(s, p): ({}, {}) for s in ("bm25", "hybrid")
                                                    for p in ("val", "train")}
    default = f"k1={SETTINGS[0][0]} b={SETTINGS[0][1]}"
    for name, zs in given:
        r = result[name] = one_dataset(name, zs)
        pq = r["per_query"]
        for system in ("bm25", "hybrid"):
            for part in ("eval", "val", "train"):
                a, b = pq[f"stemmed {default} {system} {part}"], pq[f"unstemmed {default} {system} {part}"]
                tests[f"{name} {system} {part}: stemmed - unstemmed"] = paired_test(a, b)
            for part in ("val", "train"):
                for j, kind in enumerate(("stemmed", "unstemmed")):
                    pooled[(system, part)][j].update({(name, q): v for q, v in pq[f"{kind} {default} {system} {part}"]
                                                      .items()})
        for part in ("eval", "val", "train"):
            tests[f"{name} hybrid {part}: stemmed hybrid - zero-shot"] = paired_test(
                pq[f"stemmed {default} hybrid {part}"], pq[f"zero-shot {part}"])
    for (system, part), (a, b) in pooled.items():
        tests[f"both datasets pooled, {system} {part}: stemmed - unstemmed"] = paired_test(a, b)
    for key, t in tests.items():
        print(f"{key}: {t['diff']:+.4f} (p = {t['p']:.4f}; {t['wins']} / {t['losses']}; n = {t['n']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"results": {k: {**v, "per_query": None} for k, v in result.items()},
                               "tests": tests}, indent=1))
    tmp.replace(args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
