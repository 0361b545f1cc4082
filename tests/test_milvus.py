"""The Milvus store, on Milvus Lite through the same pymilvus calls a server gets: FAISS's results, a killed
build that resumes, a model it was not built with refused, passages appended to a live index (CLI, the
pipeline and the service), an append killed half-way."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from tandem.data import load_beir
from tandem.data.beir import find_file
from tandem.errors import IncompatibleArtifactError, TandemError
from tandem.index import milvus_store
from tandem.index.dense import build_index, dense_search, load_index_and_encoder
from tandem.index.faiss_index import DenseIndex
from tandem.pipeline import Pipeline
from tests.conftest import generate_dataset, write_beir


@pytest.fixture
def corpus_file(tiny_dataset):
    return find_file(tiny_dataset, "corpus.jsonl")


@pytest.fixture
def encoder(tiny_encoder):
    tiny_encoder.settings.normalize = True  # cosine: a passage is its own nearest neighbour
    return tiny_encoder


def _close(*indexes):
    for i in indexes:
        i.close()


def test_milvus_lite_gives_faiss_flat_results(tiny_dataset, corpus_file, encoder, tmp_path):
    ds = load_beir(tiny_dataset, "test")
    build_index(corpus_file, tmp_path / "faiss", encoder, corpus_file=str(corpus_file)).close()
    built = build_index(corpus_file, tmp_path / "mv", encoder, corpus_file=str(corpus_file), store="milvus",
                        shard_size=7)
    assert built.store == "milvus" and len(built) == len(ds.corpus) and built.collection == "tandem_mv"
    built.close()
    names = sorted(p.name for p in (tmp_path / "mv").iterdir())
    assert names[:3] == ["embeddings.npy", "ids.txt", "manifest.json"] and names[3].startswith("store-")
    manifest = json.loads((tmp_path / "mv" / "manifest.json").read_text())
    assert manifest["store"] == "milvus" and manifest["milvus"]["index_type"] == "FLAT"
    assert not (tmp_path / "mv.encoding").exists()
    f, fe = load_index_and_encoder(tmp_path / "faiss")
    m, me = load_index_and_encoder(tmp_path / "mv")
    queries = ds.split_queries()
    a, b = dense_search(f, fe, queries, k=10), dense_search(m, me, queries, k=10)
    for q in a:
        assert list(a[q]) == list(b[q])
        np.testing.assert_allclose(list(a[q].values()), list(b[q].values()), rtol=1e-5, atol=1e-5)
    # more than the corpus holds: every passage once, as FAISS gives
    sa, pa = f.search_vectors(fe.encode(["glucose"]), 500)
    sb, pb = m.search_vectors(me.encode(["glucose"]), 500)
    assert pa.shape == pb.shape == (1, len(ds.corpus)) and sorted(pb[0]) == list(range(len(ds.corpus)))
    _close(f, m)
    # HNSW on the same store finds the exact neighbours on a small corpus
    h = build_index(corpus_file, tmp_path / "hnsw", encoder, store="milvus", index_type="hnsw")
    assert h.info["milvus"]["index_type"] == "HNSW"
    v = fe.encode(list(queries.values()))
    assert (h.search_vectors(v, 5)[1] == f.search_vectors(v, 5)[1]).mean() > 0.9
    h.close()


def test_killed_milvus_build_resumes_without_duplicates(tiny_dataset, corpus_file, encoder, tmp_path, monkeypatch):
    whole = build_index(corpus_file, tmp_path / "whole", encoder, shard_size=7)
    real = milvus_store.upsert
    calls = {"n": 0}

    def dies_on_third_shard(client, name, start, ids, vectors):
        calls["n"] += 1
        if calls["n"] == 3:
            real(client, name, start, ids[:3], vectors[:3])  # part of the batch got in
            raise KeyboardInterrupt("killed")
        real(client, name, start, ids, vectors)

    monkeypatch.setattr(milvus_store, "upsert", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_file, tmp_path / "idx", encoder, shard_size=7, store="milvus")
    assert not (tmp_path / "idx").exists()  # nothing half-built where the index goes
    store = list((tmp_path / "idx.encoding").glob("store-*.db"))
    assert len(store) == 1
    encoded = {"n": 0}
    real_encode = encoder.encode
    encoder.encode = lambda texts, **kw: (encoded.__setitem__("n", encoded["n"] + 1), real_encode(texts, **kw))[1]
    calls["n"] = 10
    resumed = build_index(corpus_file, tmp_path / "idx", encoder, shard_size=7, store="milvus")
    assert encoded["n"] == 0  # the vectors came from the shards the killed run wrote
    n_shards = -(-len(whole) // 7)
    assert calls["n"] == 10 + n_shards - 2  # the third shard again (from its first missing row), then the rest
    assert (tmp_path / "idx" / store[0].name).is_dir()  # the same store, moved into the index
    assert milvus_store.count_rows(resumed.client, resumed.collection) == len(whole)  # upserts: no duplicates
    v = real_encode(["glucose insulin", "sleep"])
    np.testing.assert_array_equal(resumed.search_vectors(v, 10)[1], whole.search_vectors(v, 10)[1])
    resumed.close()


def test_milvus_store_refuses_another_model_and_damage(tiny_dataset, corpus_file, encoder, tmp_path):
    from tests.conftest import make_tiny_bert

    build_index(corpus_file, tmp_path / "idx", encoder, store="milvus").close()
    other = make_tiny_bert(tmp_path / "other-model", seed=1)
    with pytest.raises(IncompatibleArtifactError, match="rebuild the index"):
        load_index_and_encoder(tmp_path / "idx", str(other))
    with pytest.raises(IncompatibleArtifactError, match="the index was built with"):
        DenseIndex.load(tmp_path / "idx", expect={"model_fingerprint": "x"})
    ids = (tmp_path / "idx" / "ids.txt").read_text().splitlines()
    (tmp_path / "idx" / "ids.txt").write_text("\n".join(reversed(ids)) + "\n")
    with pytest.raises(IncompatibleArtifactError, match="ids.txt"):
        DenseIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "ids.txt").write_text("\n".join(ids) + "\n")
    index = DenseIndex.load(tmp_path / "idx")
    index.close()
    with pytest.raises(TandemError, match="ivf"):
        build_index(corpus_file, tmp_path / "f", encoder, index_type="ivf")
    with pytest.raises(TandemError, match="ivfpq"):
        build_index(corpus_file, tmp_path / "m", encoder, store="milvus", index_type="ivfpq")
    with pytest.raises(TandemError, match="--store milvus"):
        build_index(corpus_file, tmp_path / "f", encoder, milvus_uri="http://localhost:1")


def test_append_through_the_cli_then_search_finds_them(tiny_dataset, tiny_model_dir, tmp_path, capsys):
    from tests.conftest import run_cli

    idx = tmp_path / "idx"
    code, out = run_cli(["index", "--data", tiny_dataset, "--out", idx, "--model", tiny_model_dir, "--normalize",
                         "--store", "milvus", "--max-length", "64"], capsys)
    assert code == 0, out
    assert "Milvus collection tandem_idx" in out
    new = write_beir(tmp_path / "new", {"n1": ("Aardvark burrows", "aardvarks dig burrows in termite mounds at night"),
                                        "n2": ("", "zeppelin hangars of the nineteen thirties")}, {}, {"test": {}})
    code, out = run_cli(["index", "--append", "--data", new, "--out", idx], capsys)
    assert code == 0 and "appended 2 passages" in out, out
    code, out = run_cli(["search", "--index", idx, "--query", "aardvarks dig burrows in termite mounds at night",
                         "--k", "3", "--data", tiny_dataset], capsys)
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0].split()[2] == "n1" and "Aardvark burrows" in lines[0]  # the appended text, from the index dir
    code, out = run_cli(["index", "--append", "--data", new, "--out", idx], capsys)  # twice: refused
    assert code != 0 and "already in the index" in out
    code, out = run_cli(["index", "--data", tiny_dataset, "--out", tmp_path / "f", "--model", tiny_model_dir], capsys)
    assert code == 0
    code, out = run_cli(["index", "--append", "--data", new, "--out", tmp_path / "f"], capsys)
    assert code != 0 and "--store milvus" in out
    pipe = Pipeline.load(idx)
    assert len(pipe.index) == len(pipe.corpus) == 62 and pipe.corpus.text("n2").startswith("zeppelin")
    assert pipe.search("zeppelin hangars of the nineteen thirties", k=1)[0].pid == "n2"
    pipe.close()


def test_an_append_killed_before_its_manifest_leaves_the_index_as_it_was(tiny_dataset, corpus_file, encoder,
                                                                         tmp_path, monkeypatch):
    built = build_index(corpus_file, tmp_path / "idx", encoder, corpus_file=str(corpus_file), store="milvus")
    built.close()
    pipe = Pipeline.load(tmp_path / "idx")
    import tandem.io

    real = tandem.io.write_json

    def killed(path, obj):
        if str(path).endswith("manifest.json"):
            raise KeyboardInterrupt("killed")
        real(path, obj)

    monkeypatch.setattr(tandem.io, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        pipe.append([("ghost", "", "a passage about ghost ships of the atlantic")])
    monkeypatch.setattr(tandem.io, "write_json", real)
    assert len(pipe.index) == 60 and all(h.pid != "ghost" for h in pipe.search("ghost ships of the atlantic", k=60))
    pipe.close()
    again = Pipeline.load(tmp_path / "idx")  # the collection holds a row ids.txt's committed part does not name
    assert len(again.index) == 60 and all(h.pid != "ghost" for h in again.search("ghost ships of the atlantic", k=60))
    assert again.append([("ship", "", "a passage about ghost ships of the atlantic")]) == 1  # takes the orphan's row
    hits = again.search("a passage about ghost ships of the atlantic", k=3)
    assert hits[0].pid == "ship" and all(h.pid != "ghost" for h in hits)
    again.close()
    final = DenseIndex.load(tmp_path / "idx")
    assert len(final) == 61 and milvus_store.count_rows(final.client, final.collection) == 61
    final.close()


def test_service_adds_passages_live_behind_the_api_key(tmp_path, tiny_model_dir):
    from tests.conftest import KEY, Server, call

    data = write_beir(tmp_path / "data", *generate_dataset(n_passages=40, n_queries=10))
    from tandem.models.encoder import Encoder

    enc = Encoder.from_pretrained(str(tiny_model_dir), max_length=32, normalize=True)
    build_index(find_file(data, "corpus.jsonl"), tmp_path / "idx", enc, store="milvus",
                corpus_file=str(find_file(data, "corpus.jsonl"))).close()
    server = Server(str(tmp_path / "idx"), "--allow-reload", "--allow-append", "--api-key", KEY)
    try:
        with pytest.raises(IncompatibleArtifactError, match="one process at a time"):
            DenseIndex.load(tmp_path / "idx")  # the Lite store is the server's while it runs
        body = {"passages": [{"id": "live1", "title": "Okapi", "text": "the okapi is a forest giraffe of the congo"}]}
        assert call(server.url + "/passages", body, key=None)[0] == 401
        assert call(server.url + "/passages", {"passages": [{"id": "x"}]})[0] == 422
        code, out = call(server.url + "/passages", body)
        assert code == 200 and out["appended"] == 1 and out["passages"] == 41, out
        code, out = call(server.url + "/search", {"query": "the okapi is a forest giraffe of the congo", "k": 2})
        assert code == 200 and out["results"][0]["hits"][0]["pid"] == "live1", out
        assert out["results"][0]["hits"][0]["title"] == "Okapi"
        assert call(server.url + "/passages", body)[0] == 422  # the same id again
        os.kill(server.proc.pid, signal.SIGHUP)  # a reload reads the appended passages back from the directory
        code, out = call(server.url + "/reload", {})
        assert code == 200 and out["passages"] == 41, out
        code, out = call(server.url + "/search", {"query": "the okapi is a forest giraffe of the congo", "k": 1})
        assert out["results"][0]["hits"][0]["pid"] == "live1"
        assert call(server.url + "/info")[1]["store"] == "milvus"
    finally:
        assert server.stop() == 0, server.output()
    disabled = Server(str(tmp_path / "idx"))
    try:
        code, out = call(disabled.url + "/passages", {"passages": [{"id": "z", "text": "z"}]}, key=None)
        assert code == 403 and "--allow-append" in out["error"]
    finally:
        disabled.stop()
