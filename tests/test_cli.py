"""The command line, run as a user runs it: in a subprocess, checking exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SCIFACT, tandem


def test_help_lists_commands():
    out = tandem("--help").stdout
    for cmd in ("data", "bm25", "index", "search", "evaluate"):
        assert cmd in out


def test_pipeline_on_tiny_data(tiny_dataset, tiny_model_dir, tmp_path):
    assert "OK" in tandem("data", "check", tiny_dataset).stdout
    stats = json.loads(tandem("data", "check", tiny_dataset, "--json").stdout)
    assert stats["passages"] == 60
    tandem("bm25", "--data", tiny_dataset, "--split", "test", "--out", tmp_path / "bm25.trec", "--k", "20")
    tandem("index", "--data", tiny_dataset, "--out", tmp_path / "idx", "--model", tiny_model_dir, "--max-length", 64,
           "--normalize")
    tandem("search", "--index", tmp_path / "idx", "--data", tiny_dataset, "--k", 20, "--out", tmp_path / "dense.trec")
    (tmp_path / "q.tsv").write_text("x1\tprotein cell gene\r\nx2\theart blood\r\n")
    tandem("search", "--index", tmp_path / "idx", "--queries", tmp_path / "q.tsv", "--k", 3, "--out",
           tmp_path / "q.trec")
    assert {line.split()[0] for line in (tmp_path / "q.trec").read_text().splitlines()} == {"x1", "x2"}
    qrels = tiny_dataset / "qrels" / "test.tsv"
    one = json.loads(tandem("evaluate", tmp_path / "bm25.trec", "--qrels", qrels, "--json").stdout)
    assert set(one) == {"nDCG@10", "RR@10", "R@100", "R@1000"}
    assert one["nDCG@10"] > 0.5  # queries are made of their passage's words
    both = json.loads(tandem("evaluate", tmp_path / "bm25.trec", tmp_path / "dense.trec", "--qrels", qrels,
                             "--json").stdout)
    assert set(both) == {str(tmp_path / "bm25.trec"), str(tmp_path / "dense.trec")}
    assert set(both[str(tmp_path / "dense.trec")]) == {"nDCG@10", "RR@10", "R@100", "R@1000"}
    tandem("fuse", tmp_path / "bm25.trec", tmp_path / "dense.trec", "--out", tmp_path / "hybrid.trec", "--top", 15)
    hybrid = json.loads(tandem("evaluate", tmp_path / "hybrid.trec", "--qrels", qrels, "--json").stdout)
    assert hybrid["nDCG@10"] > 0.5
    from tandem.data import read_run as _read

    assert all(len(d) == 15 for d in _read(tmp_path / "hybrid.trec").values())
    assert tandem("fuse", tmp_path / "bm25.trec", "--out", tmp_path / "x.trec", check=False).returncode == 2
    # search --hybrid = dense + BM25 fused in one command (the index records its corpus file)
    tandem("search", "--index", tmp_path / "idx", "--data", tiny_dataset, "--k", 15, "--hybrid",
           "--out", tmp_path / "hybrid2.trec")
    from tandem.index.fusion import fuse_runs

    tandem("search", "--index", tmp_path / "idx", "--data", tiny_dataset, "--k", 100, "--out", tmp_path / "d100.trec")
    tandem("bm25", "--data", tiny_dataset, "--split", "test", "--out", tmp_path / "b100.trec", "--k", "100")
    want = fuse_runs([_read(tmp_path / "d100.trec"), _read(tmp_path / "b100.trec")], top=15)
    got = _read(tmp_path / "hybrid2.trec")
    assert {q: list(d) for q, d in got.items()} == {q: list(d) for q, d in want.items()}
    table = tandem("evaluate", tmp_path / "bm25.trec", tmp_path / "dense.trec", "--qrels", qrels).stdout
    assert "bm25.trec" in table and "dense.trec" in table and "nDCG@10" in table
    proc = tandem("rerank", "--run", tmp_path / "bm25.trec", "--data", tiny_dataset, "--reranker", tiny_model_dir,
                  "--k", 5, "--out", tmp_path / "rr.trec")
    assert "untrained head" in proc.stderr
    from tandem.data import ranked, read_run

    reranked, first = read_run(tmp_path / "rr.trec"), read_run(tmp_path / "bm25.trec")
    assert set(reranked) == set(first)
    for qid, docs in reranked.items():  # the first stage's top-5 re-ordered, then its tail unchanged
        new, old = [p for p, _ in ranked(docs)], [p for p, _ in ranked(first[qid])]
        assert set(new[:5]) == set(old[:5]) and new[5:] == old[5:]
    tandem("rerank", "--run", tmp_path / "bm25.trec", "--data", tiny_dataset, "--reranker", tiny_model_dir,
           "--k", 5, "--out", tmp_path / "rr5.trec", "--drop-tail")
    assert all(len(d) == min(5, len(first[q])) for q, d in read_run(tmp_path / "rr5.trec").items())
    hits = tandem("search", "--index", tmp_path / "idx", "--query", "protein cell gene", "--k", 3,
                  "--data", tiny_dataset).stdout.splitlines()
    assert len(hits) == 3 and hits[0].split()[0] == "1"


def test_bad_input_exits_nonzero_without_traceback(tmp_path, tiny_dataset):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"\n')
    (bad / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    proc = tandem("data", "check", bad, check=False)
    assert proc.returncode == 2
    assert f"{bad / 'corpus.jsonl'}:2: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = tandem("bm25", "--data", "no-such-set", "--out", tmp_path / "r.trec", check=False,
                  env={"TANDEM_DATA": str(tmp_path), "TANDEM_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 2 and "TANDEM_DATA" in proc.stderr and "Traceback" not in proc.stderr
    proc = tandem("bm25", "--data", tiny_dataset, "--split", "dev", "--out", tmp_path / "r.trec", check=False)
    assert proc.returncode == 2 and "no qrels for split 'dev'" in proc.stderr
    proc = tandem("search", "--index", tmp_path, "--query", "x", check=False)
    assert proc.returncode == 2 and "not a tandem index" in proc.stderr
    taken = tmp_path / "taken"
    taken.write_text("a user's file\n")  # --out naming a file: a clear error, the file left as it was
    for cmd in (("demo", "--data", tiny_dataset), ("train", "--data", tiny_dataset, "--run", tmp_path / "r.trec")):
        proc = tandem(*cmd, "--out", taken, check=False)
        assert proc.returncode == 2 and f"{taken}: output directory expected" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and taken.read_text() == "a user's file\n"


@pytest.mark.slow
def test_scifact_bm25_reference(tmp_path):
    """BM25 on SciFact test: unstemmed it reproduces the reference nDCG@10 0.662 (../shared/data/README.md) within
    0.01; the default, English stemming, gives the 0.686 measured in BENCHMARKS.md ("BM25 with stemming")."""
    env = {"TANDEM_DATA": str(SCIFACT.parent)}
    tandem("data", "check", "scifact", env=env)
    for stem, ndcg, recall in (("none", 0.662, 0.876), (None, 0.686, 0.913)):
        out = tmp_path / f"bm25-{stem}.trec"
        tandem("bm25", "--data", "scifact", "--split", "test", "--out", out, *(["--stemmer", stem] if stem else []),
               env=env)
        res = json.loads(tandem("evaluate", out, "--qrels", SCIFACT / "qrels" / "test.tsv", "--json").stdout)
        assert abs(res["nDCG@10"] - ndcg) <= 0.01, (stem, res)
        assert abs(res["R@100"] - recall) <= 0.01, (stem, res)


def test_python_api_is_one_import_away():
    import tandem

    for name in tandem.__all__:
        assert getattr(tandem, name) is not None, name
    proc = subprocess.run([sys.executable, "-c", "import sys, tandem.cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "False"  # the CLI imports heavy modules only inside commands


def test_library_errors_are_builtin_exceptions_too():
    """errors.py promises that ``except ValueError`` (or KeyError, ImportError...) keeps working: every error tandem
    raises on purpose is a subclass that also derives from a builtin, never the bare base class."""
    import ast
    import inspect
    from pathlib import Path

    import tandem.errors as errors

    root = Path(errors.__file__).parent
    bare = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    getattr(node.exc.func, "id", None) == "TandemError":
                bare.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not bare, f"raise a TandemError subclass instead: {bare}"
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.TandemError) and cls is not errors.TandemError:
            assert any(b.__module__ == "builtins" and b is not object for b in cls.__mro__), name
    assert str(errors.UnknownIdError("passage 'x' is not in the corpus")) == "passage 'x' is not in the corpus"
