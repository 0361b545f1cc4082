from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tandem.data import load_beir
from tandem.errors import IncompatibleArtifactError, TandemError
from tandem.index import DenseIndex, build_index, dense_search, load_embeddings, load_index_and_encoder
from tandem.io import atomic_dir


def _vectors(n=500, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32)


def test_flat_matches_brute_force():
    docs, queries = _vectors(), _vectors(20, seed=1)
    ids = [f"p{i}" for i in range(len(docs))]
    idx = DenseIndex.build(docs, ids, {})
    scores, pos = idx.search_vectors(queries, 10)
    brute = queries @ docs.T
    expect = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(pos, expect)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expect, 1), rtol=1e-5)
    run = idx.search([f"q{i}" for i in range(20)], queries, 10)
    assert list(run["q0"]) == [ids[j] for j in expect[0]]


def test_hnsw_and_ivfpq_recall():
    docs, queries = _vectors(2000, 32), _vectors(50, 32, seed=1)
    ids = [str(i) for i in range(len(docs))]
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    for kind, floor in (("hnsw", 0.9), ("ivfpq", 0.3)):
        _, pos = DenseIndex.build(docs, ids, {}, kind=kind).search_vectors(queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, exact)])
        assert recall >= floor, (kind, recall)
    with pytest.raises(TandemError, match="at least 256 vectors"):
        DenseIndex.build(docs[:100], ids[:100], {}, kind="ivfpq")
    with pytest.raises(TandemError, match="index type must be one of"):
        DenseIndex.build(docs, ids, {}, kind="lsh")


def test_save_load_round_trip(tmp_path):
    docs = _vectors()
    idx = DenseIndex.build(docs, [f"p{i}" for i in range(len(docs))], {"model": "m"})
    idx.save(tmp_path / "idx")
    back = DenseIndex.load(tmp_path / "idx")
    assert back.ids == idx.ids and back.info["model"] == "m" and back.info["format_version"] == 1
    q = _vectors(5, seed=3)
    np.testing.assert_array_equal(back.search_vectors(q, 5)[1], idx.search_vectors(q, 5)[1])
    with pytest.raises(IncompatibleArtifactError, match="built with model='m' but is being used with model='x'"):
        DenseIndex.load(tmp_path / "idx", expect={"model": "x"})
    with pytest.raises(IncompatibleArtifactError, match="not a tandem index"):
        DenseIndex.load(tmp_path)


def test_failed_save_keeps_old_index(tmp_path):
    docs = _vectors()
    ids = [f"p{i}" for i in range(len(docs))]
    DenseIndex.build(docs, ids, {"model": "old"}).save(tmp_path / "idx")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "idx") as tmp:
            (tmp / "index.faiss").write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert DenseIndex.load(tmp_path / "idx").info["model"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp dirs left behind


def test_build_and_search_with_encoder(tiny_dataset, tiny_encoder, tiny_model_dir, tmp_path):
    ds = load_beir(tiny_dataset, "test")
    tiny_encoder.settings.normalize = True  # cosine: a passage is its own nearest neighbour
    build_index(ds.corpus, tmp_path / "idx", tiny_encoder, corpus_hash="abc", embeddings_dtype="float16")
    emb = load_embeddings(tmp_path / "idx" / "embeddings.npy")
    assert emb.dtype == np.float16 and emb.shape == (60, 32) and isinstance(emb, np.memmap)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    for key in ("model", "model_fingerprint", "pooling", "normalize", "dim", "corpus_hash", "index_type", "versions"):
        assert key in manifest
    index, encoder = load_index_and_encoder(tmp_path / "idx")
    run = dense_search(index, encoder, ds.split_queries(), k=5)
    assert set(run) == set(ds.qrels) and all(len(v) == 5 for v in run.values())
    # each passage retrieves itself first when used as a query
    self_run = dense_search(index, encoder, {"x": ds.corpus.text("d7")}, k=1)
    assert list(self_run["x"]) == ["d7"]


def test_index_refuses_another_model(tiny_dataset, tiny_encoder, tmp_path):
    from tests.conftest import make_tiny_bert

    ds = load_beir(tiny_dataset, "test")
    build_index(ds.corpus, tmp_path / "idx", tiny_encoder)
    other = make_tiny_bert(tmp_path / "other-model", seed=1)
    with pytest.raises(IncompatibleArtifactError, match="rebuild the index"):
        load_index_and_encoder(tmp_path / "idx", str(other))


def test_killed_index_build_resumes_from_its_shards(tiny_dataset, tiny_encoder, tmp_path):
    ds = load_beir(tiny_dataset, "test")
    whole = build_index(ds.corpus, tmp_path / "whole", tiny_encoder, shard_size=7)
    calls = {"n": 0}
    real = tiny_encoder.encode

    def dies_on_third_shard(texts, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(texts, **kw)

    tiny_encoder.encode = dies_on_third_shard
    with pytest.raises(KeyboardInterrupt):
        build_index(ds.corpus, tmp_path / "idx", tiny_encoder, shard_size=7)
    assert not (tmp_path / "idx").exists()  # nothing half-built where the index goes
    assert len(list((tmp_path / "idx.encoding").glob("shard-*.npy"))) == 2
    calls["n"] = 10
    resumed = build_index(ds.corpus, tmp_path / "idx", tiny_encoder, shard_size=7)
    n_shards = -(-len(ds.corpus) // 7)
    assert calls["n"] == 10 + n_shards - 2  # only the missing shards were encoded
    assert resumed.ids == whole.ids and not (tmp_path / "idx.encoding").exists()
    np.testing.assert_allclose(load_embeddings(tmp_path / "idx" / "embeddings.npy"),
                               load_embeddings(tmp_path / "whole" / "embeddings.npy"), rtol=1e-5, atol=1e-6)
    # other settings (shard size) start over instead of mixing shards
    (tmp_path / "idx.encoding").mkdir()
    (tmp_path / "idx.encoding" / "key.json").write_text('{"shard_size": 3}')
    (tmp_path / "idx.encoding" / "shard-00000.npy").write_bytes(b"junk")
    again = build_index(ds.corpus, tmp_path / "idx", tiny_encoder, shard_size=7)
    assert again.ids == whole.ids


def test_reciprocal_rank_fusion_by_hand():
    from tandem.index.fusion import fuse_runs, rrf_scores

    a = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    b = {"q": {"c": 5.0, "a": 4.0}, "only-b": {"x": 1.0}}
    fused = fuse_runs([a, b])
    assert fused["q"] == pytest.approx({"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62})
    assert list(fused["q"]) == ["a", "c", "b"]  # ranked
    assert fused["only-b"] == pytest.approx({"x": 1 / 61})  # a query in one run only is kept
    # weights, depth and the constant
    s = rrf_scores([a["q"], b["q"]], k=0, weights=[1.0, 2.0], depth=1)
    assert s == pytest.approx({"a": 1.0, "c": 2.0})
    assert list(fuse_runs([a, b], top=1)["q"]) == ["a"]
    with pytest.raises(TandemError, match="weights"):
        rrf_scores([a["q"]], weights=[1.0, 2.0])
    with pytest.raises(TandemError):
        fuse_runs([])


def test_rerank_of_two_first_stages_scores_each_pair_once(tiny_dataset):
    from tandem.rerank import rerank

    ds = load_beir(tiny_dataset, "test")

    class Counting:
        def __init__(self):
            self.pairs = 0

        def predict(self, pairs, batch_size=32, progress=False):
            self.pairs += len(pairs)
            return np.array([float(len(q) + len(p) % 7) for q, p in pairs])

    qid = next(iter(ds.queries))
    ids = list(ds.corpus.ids)
    first = {qid: {p: 10.0 - i for i, p in enumerate(ids[:6])}}
    second = {qid: {p: 10.0 - i for i, p in enumerate(ids[3:9])}}
    model, cache = Counting(), {}
    a = rerank(first, ds.queries, ds.corpus, model, k=4, cache=cache)
    b = rerank(second, ds.queries, ds.corpus, model, k=4, cache=cache)
    assert model.pairs == 7  # ids[0:4] and ids[3:7] share ids[3]
    fresh = Counting()
    assert rerank(second, ds.queries, ds.corpus, fresh, k=4) == b and fresh.pairs == 4
    assert list(a[qid])[4:] == ids[4:6]  # the tail follows in first-stage order


def test_index_shards_spread_over_torchrun_processes(tiny_dataset, tiny_model_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m tandem index` deals the shards out and gives the same index."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TANDEM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    common = ["index", "--data", str(tiny_dataset), "--model", str(tiny_model_dir), "--max-length", "32",
              "--shard-size", "7"]
    one = subprocess.run([sys.executable, "-m", "tandem", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "tandem", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "this process's shards encoded" in two.stderr  # rank 1 encoded its share and left the index to rank 0
    a, b = DenseIndex.load(tmp_path / "one"), DenseIndex.load(tmp_path / "two")
    assert a.ids == b.ids and not (tmp_path / "two.encoding").exists()
    np.testing.assert_allclose(load_embeddings(tmp_path / "two" / "embeddings.npy"),
                               load_embeddings(tmp_path / "one" / "embeddings.npy"), rtol=1e-5, atol=1e-5)


def test_index_streamed_from_the_corpus_file_equals_the_loaded_corpus(tiny_dataset, tiny_encoder, tmp_path):
    ds = load_beir(tiny_dataset, "test")
    loaded = build_index(ds.corpus, tmp_path / "loaded", tiny_encoder, shard_size=7)
    streamed = build_index(tiny_dataset / "corpus.jsonl", tmp_path / "streamed", tiny_encoder, shard_size=7)
    assert streamed.ids == loaded.ids == ds.corpus.ids
    np.testing.assert_allclose(load_embeddings(tmp_path / "streamed" / "embeddings.npy"),
                               load_embeddings(tmp_path / "loaded" / "embeddings.npy"), rtol=1e-5, atol=1e-6)
    info = json.loads((tmp_path / "streamed" / "manifest.json").read_text())
    assert info["passages"] == len(ds.corpus) and len(info["corpus_hash"]) == 64  # hashed from the file
    assert info["corpus_file"] == str((tiny_dataset / "corpus.jsonl").resolve())
    q = tiny_encoder.encode(list(ds.split_queries().values()))
    np.testing.assert_array_equal(streamed.search_vectors(q, 5)[1], loaded.search_vectors(q, 5)[1])


def test_ivfpq_built_from_shards_trains_on_a_sample_and_finds_neighbours(tmp_path):
    from tandem.index.faiss_index import train_size

    rng = np.random.default_rng(0)
    n, d = 3000, 16
    centers = rng.normal(size=(30, d)).astype(np.float32)
    docs = centers[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)

    class Fixed:  # an "encoder" whose vectors are the rows above, in corpus order
        dim, name = d, "fixed"

        def encode(self, texts, **kw):
            return docs[[int(t.split()[-1]) for t in texts]]

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"p{i}", "title": "", "text": f"passage {i}"}) + "\n"
                              for i in range(n)))
    import tandem.index.dense as dense

    real = dense.encoder_info, dense.train_size
    dense.train_size = lambda n, nlist: 1000  # a sample, as at scale
    dense.encoder_info = lambda e: {"model": "fixed", "model_fingerprint": "f", "pooling": "cls", "normalize": False,
                                    "max_length": 8, "prefix": "", "dim": d}
    try:
        idx = build_index(corpus, tmp_path / "pq", Fixed(), index_type="ivfpq", shard_size=1000, nlist=16, pq_m=8,
                          embeddings_dtype=None)
    finally:
        dense.encoder_info, dense.train_size = real
    assert train_size(n, 16) == n and train_size(10**6, 4000) == 256_000  # grows with nlist (sqrt n), not n
    assert idx.index.ntotal == n and idx.ids[:3] == ["p0", "p1", "p2"]
    exact = DenseIndex.build(docs, idx.ids, {}, kind="flat")
    _, want = exact.search_vectors(docs[:200], 10)
    whole = DenseIndex.build(docs, idx.ids, {}, kind="ivfpq", nlist=16, pq_m=8)  # trained on every vector

    def recall(index):
        _, got = index.search_vectors(docs[:200], 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got)])

    assert recall(idx) > 0.6 and abs(recall(idx) - recall(whole)) < 0.08, (recall(idx), recall(whole))


def test_bm25_does_not_wake_jax(tmp_path):
    """bm25s would pick JAX for its top-k and initialise it (75% of a GPU's memory per process): kept out."""
    import subprocess
    import sys

    fake = tmp_path / "site" / "jax"
    fake.mkdir(parents=True)
    marker = tmp_path / "jax-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('yes')\n")
    (fake / "lax.py").write_text("def top_k(x, k):\n    raise AssertionError('JAX top-k used')\n")
    code = ("from tandem.data.types import Corpus\n"
            "from tandem.index.bm25 import BM25\n"
            "c = Corpus.from_records([('a', '', 'protein cell gene'), ('b', '', 'cancer virus'), ('c', '', 'sleep')])\n"
            "run = BM25(c).search({'q': 'cancer'}, k=2)\n"
            "assert list(run['q']) == ['b'], run\n"
            "import jax\n"  # still importable afterwards: only hidden while bm25s loaded
            "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    assert marker.exists()  # the user's own `import jax` worked ...
    marker.unlink()
    proc = subprocess.run([sys.executable, "-c", code.replace("import jax\n", "")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and not marker.exists(), proc.stderr  # ... but bm25s never imported it


def test_bm25_stems_by_default_and_none_turns_it_off(tmp_path):
    """English stemming is the default (a query's "proteins" finds "protein"); none gives the unstemmed index;
    an unknown stemmer is a ConfigError at construction; the CLI's --stemmer reaches the run's manifest."""
    from typer.testing import CliRunner

    from tandem.cli import app
    from tandem.data.types import Corpus
    from tandem.errors import ConfigError
    from tandem.index.bm25 import BM25, BM25Settings

    c = Corpus.from_records([("a", "", "protein folding in cells"), ("b", "", "cancer virus"), ("c", "", "sleep")])
    assert BM25Settings().stemmer == "english" and BM25Settings(stemmer="none").stemmer is None
    assert list(BM25(c).search({"q": "proteins folded"}, k=3)["q"]) == ["a"]
    assert BM25(c, BM25Settings(stemmer="none")).search({"q": "proteins folded"}, k=3)["q"] == {}
    assert BM25(c).describe()["stemmer"] == "english"
    with pytest.raises(ConfigError, match="unknown stemmer 'klingon'"):
        BM25(c, BM25Settings(stemmer="klingon"))
    data = tmp_path / "d"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                               for i, t in [("a", "protein folding"), ("b", "cancer virus")]))
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "proteins"}) + "\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\n")
    for stem, hits in (("english", 1), ("none", 0)):
        out = tmp_path / f"{stem}.trec"
        res = CliRunner().invoke(app, ["bm25", "--data", str(data), "--out", str(out), "--stemmer", stem])
        assert res.exit_code == 0, res.output
        assert len(out.read_text().splitlines()) == hits
        assert json.loads((tmp_path / f"{stem}.trec.json").read_text())["settings"]["stemmer"] == (
            None if stem == "none" else stem)
