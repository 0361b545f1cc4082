"""MS MARCO passage files as distributed run through the whole tool: load, BM25, index, mine, train, evaluate."""

from __future__ import annotations

import json

from tandem.data import load_beir
from tandem.data.beir import is_msmarco_layout, splits
from tests.conftest import generate_dataset
from tests.test_cli import tandem


def write_msmarco(path, corpus, queries, qrels):
    """collection.tsv (pid, text), queries.<split>.tsv, qrels.<split>.tsv in TREC's 4 columns."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "collection.tsv").write_text("".join(f"{pid[1:]}\t{t} {x}\n" for pid, (t, x) in corpus.items()))
    for split, rows in qrels.items():
        (path / f"queries.{split}.tsv").write_text("".join(f"{q[1:]}\t{queries[q]}\n" for q in rows))
        (path / f"qrels.{split}.tsv").write_text("".join(f"{q[1:]}\t0\t{p[1:]}\t{r}\n"
                                                         for q, docs in rows.items() for p, r in docs.items()))
    return path


def test_msmarco_layout_end_to_end(tmp_path, tiny_model_dir):
    corpus, queries, qrels = generate_dataset(n_passages=60, n_queries=30)
    data = write_msmarco(tmp_path / "msmarco", corpus, queries, {"train": qrels["train"], "dev": qrels["test"]})
    assert is_msmarco_layout(data) and splits(data) == ["dev", "train"]
    ds = load_beir(data, "dev")
    assert len(ds.corpus) == 60 and set(ds.qrels) == {q[1:] for q in qrels["test"]}
    assert ds.corpus.text("0") == " ".join(corpus["d0"])
    run = tmp_path / "dev.trec"
    tandem("bm25", "--data", str(data), "--split", "dev", "--out", str(run))
    scores = json.loads(tandem("evaluate", str(run), "--qrels", str(data / "qrels.dev.tsv"), "--json").stdout)
    assert scores["RR@10"] > 0.5  # queries repeat words of their passage
    tandem("index", "--data", str(data), "--out", str(tmp_path / "idx"), "--model", str(tiny_model_dir),
           "--max-length", "32", "--no-progress")
    lists = tmp_path / "lists.jsonl"
    tandem("mine", "--data", str(data), "--out", str(lists), "--index", str(tmp_path / "idx"), "--bm25",
           "--top-n", "8", "--no-progress")
    assert len(lists.read_text().splitlines()) == 15
    tandem("train", "--data", str(data), "--lists", str(lists), "--out", str(tmp_path / "t"), "--mode", "retriever",
           "--retriever", str(tiny_model_dir), "max_steps=1", "batch_size=2", "list_size=4", "query_max_length=16",
           "passage_max_length=32", "--no-progress")
    assert (tmp_path / "t" / "retriever" / "modules.json").exists()
