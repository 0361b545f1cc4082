from __future__ import annotations

import gzip
import logging
import shutil
import zipfile
from pathlib import Path

import pytest

from tandem.data import (
    Corpus,
    load_beir,
    load_collection,
    load_corpus,
    load_qrels,
    load_queries,
    load_queries_tsv,
    read_run,
    registry,
    resolve_dataset,
    write_qrels,
    write_run,
)
from tandem.errors import DataFormatError, DatasetNotFoundError, TandemError
from tests.conftest import generate_dataset, write_beir


def test_beir_round_trip_with_crlf(tiny_dataset):
    ds = load_beir(tiny_dataset, "test")
    corpus, queries, qrels = generate_dataset()
    assert ds.corpus.ids == list(corpus)
    title, text = corpus["d3"]
    assert ds.corpus.text("d3") == f"{title} {text}"  # BEIR: title, space, text
    assert ds.corpus.title(3) == title
    assert ds.queries == queries
    assert ds.qrels == qrels["test"]
    assert (tiny_dataset / "qrels" / "test.tsv").read_bytes().count(b"\r\n") > 1


def test_gzip_files_are_read_transparently(tiny_dataset, tmp_path):
    gz = tmp_path / "gz"
    shutil.copytree(tiny_dataset, gz)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        raw = (gz / name).read_bytes()
        (gz / name).unlink()
        with gzip.open(gz / f"{name}.gz", "wb") as f:
            f.write(raw)
    a, b = load_beir(tiny_dataset, "test"), load_beir(gz, "test")
    assert list(a.corpus) == list(b.corpus) and a.queries == b.queries and a.qrels == b.qrels


def test_corpus_packs_text_and_untitled_passages():
    c = Corpus.from_records([("a", "", "  plain text "), ("b", "T", "body"), ("c", "é", "ü")])
    assert list(c) == ["plain text", "T body", "é ü"]
    assert c[1:] == ["T body", "é ü"]
    assert c.title(0) == "" and c.title(2) == "é"
    assert "b" in c and "z" not in c
    with pytest.raises(TandemError, match="'z' is not in the corpus"):
        c.text("z")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("content, line, message", [
    ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', 2, "invalid JSON"),
    ('{"_id": "a", "text": "x"}\n\n{"text": "y"}\n', 3, 'missing "_id"'),
    ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', 2, "duplicate \"_id\" 'a' \\(first seen on line 1\\)"),
    ('{"_id": "a"}\n', 1, 'missing "text"'),
    ('[1, 2]\n', 1, "expected a JSON object"),
])
def test_corpus_errors_name_file_and_line(tmp_path, content, line, message):
    path = _write(tmp_path / "corpus.jsonl", content)
    with pytest.raises(DataFormatError, match=message) as err:
        load_corpus(path)
    assert err.value.line == line
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_empty_files_are_errors(tmp_path):
    for loader, name in ((load_corpus, "corpus.jsonl"), (load_queries, "queries.jsonl"), (load_qrels, "q.tsv"),
                         (read_run, "run.trec"), (load_collection, "collection.tsv")):
        with pytest.raises(DataFormatError, match="empty"):
            loader(_write(tmp_path / name, "\n"))


def test_duplicate_query_ids(tmp_path):
    path = _write(tmp_path / "queries.jsonl", '{"_id": "1", "text": "a"}\n{"_id": 1, "text": "b"}\n')
    with pytest.raises(DataFormatError, match=r"queries.jsonl:2: duplicate"):
        load_queries(path)


@pytest.mark.parametrize("content, line, message", [
    ("query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\r\n", 3, "expected 3 columns like the first line, found 2"),
    ("q1\td1\n", 1, "expected 3 columns"),
    ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", 2, "relevance must be an integer, found 'high'"),
    ("q1\td1\t0.5\n", 1, "relevance must be an integer"),
])
def test_qrels_errors(tmp_path, content, line, message):
    path = _write(tmp_path / "qrels.tsv", content)
    with pytest.raises(DataFormatError, match=message) as err:
        load_qrels(path)
    assert err.value.line == line


def test_qrels_formats(tmp_path):
    beir = load_qrels(_write(tmp_path / "a.tsv", "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\t2.0\r\n"))
    trec = load_qrels(_write(tmp_path / "b.txt", "q1 0 d1 1\nq1 0 d2 2\n"))
    assert beir == trec == {"q1": {"d1": 1, "d2": 2}}
    write_qrels(tmp_path / "c.txt", beir)
    assert load_qrels(tmp_path / "c.txt") == beir


def test_unknown_ids_in_qrels_warn_with_counts(tmp_path, caplog):
    corpus, queries, qrels = generate_dataset()
    qrels["test"]["ghost"] = {"d1": 1}
    qrels["test"]["q15"] = {"nope": 1, "nope2": 1}
    path = write_beir(tmp_path / "ds", corpus, queries, qrels)
    with caplog.at_level(logging.WARNING):
        ds = load_beir(path, "test")
    assert "1 judgments name unknown queries and 2 name unknown passages" in caplog.text
    assert ds.qrels["ghost"] == {"d1": 1}


def test_trec_run_round_trip_and_errors(tmp_path):
    run = {"q1": {"d1": 1.5, "d2": 2.5, "d3": -1.0}, "q2": {"d9": 0.25}}
    write_run(tmp_path / "run.trec.gz", run, tag="t")
    assert read_run(tmp_path / "run.trec.gz") == run
    write_run(tmp_path / "run.trec", run, k=2)
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "d2", "1", "2.500000", "tandem"]
    assert len(lines) == 3
    with pytest.raises(DataFormatError, match=r"bad.trec:2: expected 6 columns"):
        read_run(_write(tmp_path / "bad.trec", "q1 Q0 d1 1 1.0 t\nq1 Q0 d2 2 1.0\n"))
    with pytest.raises(DataFormatError, match=r"bad2.trec:1: rank must be an integer"):
        read_run(_write(tmp_path / "bad2.trec", "q1 Q0 d1 one 1.0 t\n"))


def test_msmarco_tsv(tmp_path):
    coll = load_collection(_write(tmp_path / "collection.tsv", "0\tfirst passage\r\n1\tsecond\r\n"))
    assert coll.ids == ["0", "1"] and list(coll) == ["first passage", "second"]
    assert load_queries_tsv(_write(tmp_path / "queries.tsv", "5\twhat is it\n")) == {"5": "what is it"}
    with pytest.raises(DataFormatError, match=r"collection2.tsv:2: expected 2 tab-separated columns"):
        load_collection(_write(tmp_path / "collection2.tsv", "0\ta\n1\tb\tc\n"))
    with pytest.raises(DataFormatError, match=r":2: duplicate passage id '0'"):
        load_collection(_write(tmp_path / "collection3.tsv", "0\ta\n0\tb\n"))


def test_resolve_dataset_order(tmp_path, monkeypatch, tiny_dataset):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TANDEM_DATA", str(tiny_dataset.parent))
    assert resolve_dataset(tiny_dataset) == tiny_dataset
    assert resolve_dataset("tiny") == tiny_dataset
    monkeypatch.delenv("TANDEM_DATA")
    cached = tmp_path / "cache" / "datasets" / "tiny"
    shutil.copytree(tiny_dataset, cached)
    assert resolve_dataset("tiny") == cached
    with pytest.raises(DatasetNotFoundError, match="TANDEM_DATA"):
        resolve_dataset("unknown-set")


def _zip_dataset(src: Path, name: str, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for f in src.rglob("*"):
            if f.is_file():
                z.write(f, f"{name}/{f.relative_to(src)}")
    return dest


def test_download_checks_sha256(tmp_path, monkeypatch, tiny_dataset):
    from tandem.io import sha256_file

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TANDEM_DATA", raising=False)
    archive = _zip_dataset(tiny_dataset, "tinyset", tmp_path / "tinyset.zip")
    files = {rel: sha256_file(tiny_dataset / rel) for rel in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")}
    monkeypatch.setitem(registry.KNOWN, "tinyset", registry.KnownDataset(url=archive.as_uri(), files=files))
    path = resolve_dataset("tinyset")
    assert path == tmp_path / "cache" / "datasets" / "tinyset"
    assert load_beir(path, "test").qrels == load_beir(tiny_dataset, "test").qrels
    bad = dict(files, **{"corpus.jsonl": "0" * 64})
    bad_archive = _zip_dataset(tiny_dataset, "tinybad", tmp_path / "tinybad.zip")
    monkeypatch.setitem(registry.KNOWN, "tinybad", registry.KnownDataset(url=bad_archive.as_uri(), files=bad))
    with pytest.raises(TandemError, match=f"corpus.jsonl has sha256 {files['corpus.jsonl']}, expected 0000"):
        registry.download_dataset("tinybad", tmp_path / "cache" / "datasets" / "tinybad")
    assert not (tmp_path / "cache" / "datasets" / "tinybad").exists()


def test_download_failure_names_tandem_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TANDEM_DATA", raising=False)
    missing = (tmp_path / "nowhere.zip").as_uri()
    monkeypatch.setitem(registry.KNOWN, "gone", registry.KnownDataset(url=missing, files={}))
    with pytest.raises(DatasetNotFoundError, match="set TANDEM_DATA"):
        resolve_dataset("gone")


def test_check_dataset_statistics(tiny_dataset):
    from tandem.data import check_dataset

    stats = check_dataset(tiny_dataset)
    assert stats["passages"] == 60 and stats["queries"] == 20
    assert stats["splits"]["test"]["queries"] == 10 and stats["splits"]["train"]["judgments"] == 10
