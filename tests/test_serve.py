"""The search service against real uvicorn servers: bad input, concurrent load, reload, shutdown, the page."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tandem.data import load_beir
from tandem.data.beir import find_file
from tandem.index.dense import build_index
from tandem.models.encoder import Encoder
from tandem.pipeline import Pipeline
from tests.conftest import KEY, Server, call


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    from tests.conftest import generate_dataset, write_beir

    root = tmp_path_factory.mktemp("serve")
    data = write_beir(root / "data", *generate_dataset(n_passages=80, n_queries=40))
    ds = load_beir(data, "test")
    enc = Encoder.from_pretrained(str(tiny_model_dir), max_length=32)
    build_index(ds.corpus, root / "idx", enc, corpus_file=str(find_file(data, "corpus.jsonl")))
    shutil.copytree(root / "idx", root / "idx2")
    from tandem.models.reranker import Reranker

    # the new head, saved: the same weights in every process (still flagged untrained)
    Reranker.from_pretrained(str(tiny_model_dir), max_length=48).save(root / "ce")
    server = Server(str(root / "idx"), "--reranker", str(root / "ce"), "--allow-untrained-reranker", "--allow-reload",
                    "--api-key", KEY, "--max-batch", "16")
    yield server, root, ds, root / "ce"
    server.stop()


def test_bad_input_gets_4xx_and_the_server_keeps_answering(served):
    server, root, _, _ = served
    url = server.url + "/search"
    ok = {"query": "glucose sleep", "k": 3, "candidates": 5}
    cases = [
        ({"query": ""}, 422), ({"query": "   "}, 422), ({"query": "x" * 2001}, 422),
        ({"query": "a", "k": 0}, 422), ({"query": "a", "k": 101}, 422), ({"query": "a", "candidates": 1001}, 422),
        ({"query": "a", "k": "10"}, 422), ({"queries": [1, 2]}, 422), ({"queries": []}, 422),
        ({"queries": ["a"] * 33}, 422), ({"query": "a", "queries": ["b"]}, 422), ({}, 422),
        ({"query": "a", "colour": "red"}, 422), ({"query": ["a"]}, 422), ({"query": "a", "rerank": "yes"}, 422),
    ]
    for body, status in cases:
        code, out = call(url, body)
        assert code == status, (body, code, out)
        assert out["error"], body
        assert call(url, ok)[0] == 200
    assert call(url, raw=b"{not json")[0] == 400
    assert call(url, raw=b'{"query": "' + b"a" * 300_000 + b'"}')[0] == 413
    assert call(url, ok, key=None)[0] == 401 and call(url, ok, key="wrong")[0] == 401
    assert call(server.url + "/info", key=None)[0] == 401
    assert call(server.url + "/health", key=None)[0] == 200  # health needs no key
    code, out = call(server.url + "/reload", {"index": str(root / "nowhere")})
    assert code == 422 and "old index keeps serving" in out["error"]
    code, out = call(url, ok)
    assert code == 200 and len(out["results"][0]["hits"]) == 3 and out["reranked"]


def test_concurrent_load_matches_the_pipeline_and_survives_a_reload(served):
    server, root, ds, model_dir = served
    pipe = Pipeline.load(root / "idx", reranker=str(model_dir), allow_untrained_reranker=True)
    queries = list(ds.split_queries().values())
    rng = random.Random(0)
    plan = [[(rng.choice(queries), rng.choice([True, False])) for _ in range(200)] for _ in range(8)]
    expect = {(q, rr): pipe.search(q, k=5, candidates=10, rerank=rr) for client in plan for q, rr in client}

    def client(items):
        bad = []
        for q, rr in items:
            code, out = call(server.url + "/search", {"query": q, "k": 5, "candidates": 10, "rerank": rr})
            if code != 200:
                bad.append((code, out))
                continue
            got = out["results"][0]["hits"]
            want = expect[(q, rr)]
            same = [h["pid"] for h in got] == [h.pid for h in want]
            close = all(abs(h["score"] - w.score) < 1e-3 for h, w in zip(got, want))
            if not (close and (same or sorted(h["score"] for h in got) == sorted(w.score for w in want))):
                bad.append(("mismatch", q, got, want))
        return bad

    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(client, items) for items in plan]
        time.sleep(1.0)
        reloads = [call(server.url + "/reload", {"index": str(root / "idx2")}), call(server.url + "/reload", {})]
        os.kill(server.proc.pid, signal.SIGHUP)  # SIGHUP reloads too
        problems = [p for f in futures for p in f.result()]
    assert not problems, problems[:3]
    assert [c for c, _ in reloads] == [200, 200]
    info = call(server.url + "/info")[1]
    assert info["reloads"] >= 2 and info["queries_served"] >= 1600
    assert info["mean_batch"] > 1.0  # concurrent requests were answered together


def test_search_page_in_a_headless_browser_and_clean_shutdown(served, tmp_path):
    _, root, ds, _ = served
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    server = Server(str(root / "idx"))  # no key, no re-ranker, no reload
    try:
        assert call(server.url + "/reload", {})[0] == 403
        code, spec = call(server.url + "/openapi.json")
        assert code == 200 and {"/search", "/health", "/info", "/reload"} <= set(spec["paths"])
        with urllib.request.urlopen(server.url + "/docs", timeout=30) as r:
            assert r.status == 200 and b"swagger" in r.read().lower()
        code, out = call(server.url + "/search", {"query": "glucose", "k": 2})
        assert code == 200 and not out["reranked"] and out["results"][0]["hits"][0]["rerank_score"] is None
        if chromium is None:
            pytest.skip("chromium is not installed (.ci/run installs it)")
        query = next(iter(ds.split_queries().values()))
        proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
                               f"{server.url}/?q={urllib.request.quote(query)}"],
                              capture_output=True, text=True, timeout=120)
        dom = proc.stdout
        assert 'class="hit"' in dom, (proc.stderr[-2000:], dom[-2000:])
        assert dom.count('class="hit"') == 10 and "results in" in dom
        top = Pipeline.load(root / "idx").search(query, k=1)[0]
        assert top.pid in dom
    finally:
        assert server.stop() == 0  # SIGINT: graceful shutdown, exit status 0
    assert "Shutting down" in server.output() or "Finished server process" in server.output()


def test_hybrid_pipeline_is_the_rrf_of_dense_and_bm25(served):
    from tandem.index.bm25 import bm25_search
    from tandem.index.dense import dense_search, load_index_and_encoder
    from tandem.index.fusion import fuse_runs

    _, root, ds, _ = served
    pipe = Pipeline.load(root / "idx", hybrid=True)
    assert pipe.info["hybrid"] and pipe.info["bm25"]["retriever"] == "bm25s"
    qids = list(ds.queries)[:8]
    texts = [ds.queries[q] for q in qids]
    got = pipe.search(texts, k=10, candidates=30)
    index, enc = load_index_and_encoder(root / "idx")
    n = len(ds.corpus)
    want = fuse_runs([dense_search(index, enc, {q: ds.queries[q] for q in qids}, k=n),
                      bm25_search(ds.corpus, {q: ds.queries[q] for q in qids}, k=n)], top=10)
    for q, hits in zip(qids, got):
        assert [h.pid for h in hits] == list(want[q])
        assert [h.retrieval_score for h in hits] == pytest.approx(list(want[q].values()))
    bare = root / "idx-no-corpus"  # an index that does not record its corpus: hybrid search needs the texts
    shutil.copytree(root / "idx", bare)
    info = json.loads((bare / "manifest.json").read_text())
    info.pop("corpus_file")
    (bare / "manifest.json").write_text(json.dumps(info))
    with pytest.raises(Exception, match="hybrid search needs the passage texts"):
        Pipeline.load(bare, hybrid=True)
