"""MS MARCO passage files as distributed run through the whole tool: load, BM25, index, mine, train, evaluate."""

from __future__ import annotations

import json

from tandem.data import load_beir
from tandem.data.dataset import is_msmarco_layout, splits
from tests.conftest import generate_dataset, tandem


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


def test_data_check_reads_the_msmarco_layout(tmp_path):
    corpus, queries, qrels = generate_dataset(n_passages=20, n_queries=10)
    data = write_msmarco(tmp_path / "msmarco", corpus, queries, {"train": qrels["train"], "dev": qrels["test"]})
    stats = json.loads(tandem("data", "check", str(data), "--json").stdout)
    assert stats["passages"] == 20 and set(stats["splits"]) == {"dev", "train"}
    assert stats["splits"]["dev"]["file"] == "qrels.dev.tsv"
    assert stats["splits"]["dev"]["judgments"] == sum(len(d) for d in qrels["test"].values())
    assert "qrels.train.tsv:" in tandem("data", "check", str(data)).stdout
    with open(data / "qrels.dev.tsv", "a") as f:
        f.write("1\t0\t2\tvery\n")
    bad = tandem("data", "check", str(data), check=False)
    assert bad.returncode != 0 and "qrels.dev.tsv:" in bad.stderr and "relevance must be an integer" in bad.stderr


def test_official_triples_and_top1000_files(tmp_path, tiny_model_dir):
    import gzip

    import pytest

    from tandem.data import read_run
    from tandem.data.msmarco import top1000_to_trec, triples_to_lists
    from tandem.errors import DataFormatError

    corpus, queries, qrels = generate_dataset(n_passages=60, n_queries=30)
    data = write_msmarco(tmp_path / "msmarco", corpus, queries, {"train": qrels["train"], "dev": qrels["test"]})
    # qidpidtriples: (qid, positive, negative); repeated and over-the-cap negatives, an id not in the corpus
    rows = ["1\t10\t11", "1\t10\t12", "1\t10\t11", "1\t10\t13", "1\t10\t14", "2\t20\t21", "2\t21\t22",
            "3\t30\t999"]
    with gzip.open(tmp_path / "triples.tsv.gz", "wt") as f:
        f.write("\r\n".join(rows) + "\r\n")
    counts = triples_to_lists(tmp_path / "triples.tsv.gz", tmp_path / "lists.jsonl", max_negatives=3,
                              known=load_beir(data, "train").corpus)
    lists = [json.loads(l) for l in (tmp_path / "lists.jsonl").read_text().splitlines()]
    assert counts == {"triples": 8, "negatives_capped": 1, "unknown": 1, "lists": 2}
    assert lists[0] == {"qid": "1", "positives": [{"pid": "10"}],
                        "negatives": [{"pid": p, "rank": r, "source": "msmarco-bm25"}
                                      for r, p in enumerate(["11", "12", "13"], start=1)]}
    # 21 is query 2's positive in one triple and a negative in none; 22 stays a negative
    assert lists[1]["positives"] == [{"pid": "20"},
                                     {"pid": "21"}] and [e["pid"] for e in lists[1]["negatives"]] == ["22"]
    # the lists train as they are (ids are the collection's)
    (data / "queries.train.tsv").write_text("1\tq one\n2\tq two\n")
    tandem("train", "--data", str(data), "--lists", str(tmp_path / "lists.jsonl"), "--out", str(tmp_path / "t"),
           "--mode", "retriever", "--retriever", str(tiny_model_dir), "max_steps=1", "batch_size=2", "list_size=2",
           "query_max_length=16", "passage_max_length=32", "--no-progress")
    # top1000: (qid, pid, query, passage), no scores: file order is the rank
    (tmp_path / "top1000.dev").write_text("5\t3\tfive q\tp3\n5\t1\tfive q\tp1\n6\t2\tsix q\tp2\n5\t2\tfive q\tp2\n")
    assert top1000_to_trec(tmp_path / "top1000.dev", tmp_path / "run.trec", tmp_path / "q.tsv") == (2, 4)
    run = read_run(tmp_path / "run.trec")
    assert sorted(run["5"], key=lambda p: -run["5"][p]) == ["3", "1", "2"] and list(run["6"]) == ["2"]
    assert (tmp_path / "q.tsv").read_text() == "5\tfive q\n6\tsix q\n"
    (tmp_path / "bad.tsv").write_text("1\t10\t11\n1\t10\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv.*2.*3 tab-separated columns"):
        triples_to_lists(tmp_path / "bad.tsv", tmp_path / "x.jsonl")
    proc = tandem("data", "msmarco-lists", str(tmp_path / "bad.tsv"), "--out", str(tmp_path / "x.jsonl"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bad.tsv:2: expected 3" in proc.stderr
    out = tandem("data", "msmarco-run", str(tmp_path / "top1000.dev"), "--out", str(tmp_path / "run2.trec")).stderr
    assert "2 queries, 4 candidates" in out
