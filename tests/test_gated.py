"""The gated re-ranker starts equal to the bi-encoder and learns from there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.models.encoder import Encoder
from tandem.models.gated import GatedReranker, wordpiece_idf
from tandem.models.reranker import Reranker

QUERIES = ["protein cell", "heart blood therapy", "gene"]
PASSAGES = ["protein cell gene cancer virus", "risk patient study", "mouse human tumor gene signal"]


def _bi_encoder_cos(model_dir, queries, passages):
    enc = Encoder.from_pretrained(str(model_dir))
    q, p = enc.encode(queries), enc.encode(passages)
    return (q * p).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(p, axis=1)


def test_closed_gate_equals_bi_encoder(tiny_model_dir):
    ce = GatedReranker.from_body(str(tiny_model_dir), scale=20.0, gate_init=-1e4, max_length=64,
                                 query_max_length=16).eval()
    with torch.no_grad():
        scores = ce.score(QUERIES, PASSAGES).numpy()
    np.testing.assert_allclose(scores, 20.0 * _bi_encoder_cos(tiny_model_dir, QUERIES, PASSAGES), atol=1e-4)
    # nearly closed (the default start) stays close, yet the gate has a gradient
    ce = GatedReranker.from_body(str(tiny_model_dir), scale=20.0, gate_init=-8.0, max_length=64,
                                 query_max_length=16).eval()
    out = ce.score(QUERIES, PASSAGES)
    np.testing.assert_allclose(out.detach().numpy(), scores, atol=0.05)
    out.sum().backward()
    assert ce.gate.grad is not None and ce.gate.grad.abs().sum() > 0
    assert ce.head.weight.grad.abs().sum() > 0


def test_wordpiece_idf_and_lexical_term(tiny_model_dir):
    ce = GatedReranker.from_body(str(tiny_model_dir), corpus=PASSAGES * 3 + ["unrelated words here"], max_length=64)
    assert ce.idf is not None and ce.avg_len > 0
    gene = ce.tokenizer.convert_tokens_to_ids("gene")
    heart = ce.tokenizer.convert_tokens_to_ids("heart")
    assert ce.idf[heart] > ce.idf[gene]  # 'heart' is in no passage, 'gene' in two of four
    batch = ce.tokenize(["gene heart"], ["gene gene mouse"])
    assert batch["lexical"].item() > 0
    assert ce.tokenize(["heart"], ["gene mouse"])["lexical"].item() == 0.0
    idf, avg = wordpiece_idf(ce.tokenizer, ["gene", "gene mouse"])
    n, df = 2, 2
    assert idf[gene] == pytest.approx(np.log(1 + (n - df + 0.5) / (df + 0.5)), rel=1e-6)
    assert avg == 1.5


def test_save_and_load_through_reranker(tiny_model_dir, tmp_path):
    ce = GatedReranker.from_body(str(tiny_model_dir), corpus=PASSAGES, max_length=64)
    with torch.no_grad():
        ce.gate.fill_(-3.0)
        ce.w_lex.fill_(0.5)
        ce.head.weight.normal_()
    ce.save(tmp_path / "g")
    back = Reranker.from_pretrained(tmp_path / "g")
    assert isinstance(back, GatedReranker) and back.settings.architecture == "gated"
    pairs = list(zip(QUERIES, PASSAGES))
    np.testing.assert_allclose(back.predict(pairs), ce.predict(pairs), atol=1e-5)


def test_trains_in_reranker_mode(tiny_dataset, tiny_model_dir, tmp_path):

    from tests.conftest import tandem

    tandem("bm25", "--data", tiny_dataset, "--split", "train", "--out", tmp_path / "bm25.trec", "--k", 20)
    proc = tandem("train", "--data", tiny_dataset, "--run", tmp_path / "bm25.trec", "--top-n", 10, "--mode",
                  "reranker", "--reranker", tiny_model_dir, "--out", tmp_path / "g", "reranker_arch=gated",
                  "list_size=4", "batch_size=2", "max_steps=3", "reranker_max_length=48")
    back = Reranker.from_pretrained(tmp_path / "g" / "reranker")
    assert isinstance(back, GatedReranker) and back.settings.trained
    assert (back.gate != -8.0).any()  # the gate moved
    assert "3 steps" in proc.stderr


def test_fit_mixing_lowers_list_loss(tiny_model_dir):
    """On lists where the lexical overlap marks the positive, the fit raises w_lex and lowers the CE."""
    corpus = ["protein cell gene", "heart blood risk", "mouse tumor dose", "sleep diet insulin"] * 3
    ce = GatedReranker.from_body(str(tiny_model_dir), corpus=corpus, max_length=64)
    queries, passages = [], []
    for i in range(4):
        q = corpus[i]
        queries += [q] * 4
        passages += [corpus[i]] + [corpus[j] for j in range(4) if j != i]
    fit = ce.fit_mixing(queries, passages, group_size=4)
    assert fit["ce_after"] < fit["ce_before"]
    assert fit["w_lex"] > 0 and fit["lists"] == 4
    assert ce.w_lex.item() == pytest.approx(fit["w_lex"])


def test_lexical_term_is_bounded_and_cannot_turn_against_matches(tiny_model_dir, tmp_path):
    """The lexical feature lies in [0, 1] (BM25 over the query's highest possible BM25) and its weight never goes
    below zero: a learned scalar cannot rank lexical matches down (it did on NFCorpus, unbounded)."""
    ce = GatedReranker.from_body(str(tiny_model_dir), corpus=PASSAGES * 3 + ["unrelated words here"],
                                 max_length=64).eval()
    lex = ce.tokenize(["gene heart", "gene", "protein cell"],
                      ["gene gene gene gene mouse", "gene", "protein cell gene cancer virus"])["lexical"]
    assert ((lex > 0) & (lex < 1)).all()
    k1 = ce.k1
    q = ce.tokenizer("gene", add_special_tokens=False)["input_ids"]
    p = ce.tokenizer("gene", add_special_tokens=False)["input_ids"]
    bm25 = ce.idf[q[0]] * (k1 + 1) / (1 + k1 * (1 - ce.b + ce.b * len(p) / ce.avg_len))
    assert lex[1].item() == pytest.approx(bm25 / (ce.idf[q[0]] * (k1 + 1)), rel=1e-5)
    with torch.no_grad():
        base = ce.score(QUERIES, PASSAGES)
        ce.w_lex.fill_(-2.0)
        assert torch.equal(ce.score(QUERIES, PASSAGES), base) and ce.describe()["w_lex"] == 0.0
        ce.w_lex.fill_(1.5)
        raised = ce.score(QUERIES, PASSAGES)
    assert (raised >= base - 1e-6).all() and (raised > base).any()
    # a model saved before the bound (no "lexical" in its config) keeps the raw feature and its signed weight
    ce.save(tmp_path / "g")
    import json

    from tandem.models.reranker import CONFIG_FILE

    cfg_path = tmp_path / "g" / CONFIG_FILE

    info = json.loads(cfg_path.read_text())
    assert info["gated"]["lexical"] == "bounded"
    assert Reranker.from_pretrained(tmp_path / "g").lexical == "bounded"
    del info["gated"]["lexical"]
    cfg_path.write_text(json.dumps(info))
    old = Reranker.from_pretrained(tmp_path / "g")
    assert old.lexical == "raw" and old.tokenize(["gene"], ["gene"])["lexical"].item() == pytest.approx(bm25, rel=1e-5)


def test_gated_directory_does_not_pass_for_a_plain_cross_encoder(tiny_model_dir, tmp_path):
    """CrossEncoder(dir) and AutoModelForSequenceClassification fail loudly on a gated re-ranker's directory
    instead of loading it with a random classifier; tandem loads it with the same scores (and still loads the
    older layout with the body at the top)."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    ce = GatedReranker.from_body(str(tiny_model_dir), corpus=PASSAGES, max_length=64).eval()
    with torch.no_grad():
        ce.gate.fill_(-3.0)
        ce.head.weight.normal_()
        want = ce.score(QUERIES, PASSAGES)
    ce.save(tmp_path / "g")
    assert not (tmp_path / "g" / "config.json").exists()
    with pytest.raises((OSError, ValueError)):
        AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "g"))
    st = pytest.importorskip("sentence_transformers")
    with pytest.raises((OSError, ValueError)):
        st.CrossEncoder(str(tmp_path / "g"))
    with torch.no_grad():
        assert torch.allclose(Reranker.from_pretrained(tmp_path / "g").eval().score(QUERIES, PASSAGES), want,
                              atol=1e-5)
    for f in (tmp_path / "g" / "body").iterdir():  # the layout saved before: body files at the top
        shutil.move(str(f), str(tmp_path / "g" / f.name))
    (tmp_path / "g" / "body").rmdir()
    with torch.no_grad():
        assert torch.allclose(Reranker.from_pretrained(tmp_path / "g").eval().score(QUERIES, PASSAGES), want,
                              atol=1e-5)


def test_architecture_table_decides_loading_onnx_and_memory(tmp_path, tiny_model_dir):
    """One table (tandem.models.architectures) says what each re-ranker architecture can do: an unknown name in
    a saved directory is a clear error, not a plain classifier loaded with a random head."""
    import json

    from tandem.errors import ConfigError
    from tandem.models.architectures import ARCHITECTURES, architecture
    from tandem.models.reranker import CONFIG_FILE, Reranker

    assert architecture("cross").onnx and architecture("cross").plain_classifier
    assert not architecture("gated").onnx and not architecture("gated").fused_attention
    ce = Reranker.from_pretrained(str(tiny_model_dir), max_length=32)
    ce.save(tmp_path / "ce")
    cfg = json.loads((tmp_path / "ce" / CONFIG_FILE).read_text())
    (tmp_path / "ce" / CONFIG_FILE).write_text(json.dumps({**cfg, "architecture": "sparse-moe"}))
    with pytest.raises(ConfigError, match=str(sorted(ARCHITECTURES)).replace("[", r"\[").replace("]", r"\]")):
        Reranker.from_pretrained(str(tmp_path / "ce"))


def _lexical_task(words_follow_label: bool):
    """20 queries of two rare words each; the labelled passage repeats them (or, reversed, a decoy does)."""
    from tandem.data.types import Corpus

    vocab = ["protein", "heart", "blood", "gene", "cancer", "virus", "mouse", "tumor", "signal", "risk", "patient",
             "study", "therapy", "human", "cell", "brain"]
    queries, records, candidates, qrels = {}, [], {}, {}
    for i in range(20):
        a, b = vocab[i % 16], vocab[(3 * i + 5) % 16]
        queries[f"q{i}"] = f"{a} {b}"
        match, other = f"{a} {b} {a} {b} report", f"{vocab[(i + 7) % 16]} {vocab[(i + 9) % 16]} report"
        pos, neg = (match, other) if words_follow_label else (other, match)
        records += [(f"p{i}", "", pos), (f"n{i}", "", neg), (f"x{i}", "", "unrelated filler words only")]
        candidates[f"q{i}"] = [f"x{i}", f"n{i}", f"p{i}"]  # the first stage ranks the positive last
        qrels[f"q{i}"] = {f"p{i}": 1}
    return queries, Corpus.from_records(records), candidates, qrels


@pytest.mark.parametrize("words_follow_label", [True, False])
def test_lexical_weight_fit_picks_what_ranks_best_and_scores_as_the_model_does(tiny_model_dir, words_follow_label):
    """fit_lexical_weight chooses w_lex by re-ranking whole candidate lists: a large weight where the labelled
    passages share the query's words (and the body ranks them down), none where decoys share them (the trained
    weight, 0 here, competes and wins ties); the nDCG it reports for its choice is what the re-ranker then
    scores with that weight."""
    from tandem.eval.metrics import evaluate
    from tandem.train.lexical import GRID, fit_lexical_weight

    queries, corpus, candidates, qrels = _lexical_task(words_follow_label)
    ce = GatedReranker.from_body(str(tiny_model_dir), corpus=list(corpus), max_length=64, query_max_length=16)
    with torch.no_grad():
        ce.scale.fill_(-20.0)  # a body that ranks by the wrong cue: its cosine sends word-sharing passages down
    fit = fit_lexical_weight(ce, queries, candidates, qrels, corpus)
    assert fit["queries"] == 20 and fit["pairs"] == 60 and set(map(float, fit["ndcg"])) == set(GRID)
    assert float(ce.lexical_weight().detach()) == fit["w_after"]
    if words_follow_label:
        assert fit["w_after"] >= 4 and fit["ndcg_after"] > fit["ndcg_before"] + 0.2
    else:
        assert fit["w_after"] == 0.0 and fit["ndcg_after"] == fit["ndcg_before"]
    pairs = [(queries[q], corpus.text(p)) for q in queries for p in candidates[q]]
    scores = ce.predict(pairs)
    run = {q: dict(zip(candidates[q], map(float, scores[3 * i: 3 * i + 3]))) for i, q in enumerate(queries)}
    assert evaluate(run, qrels, ["nDCG@10"])["nDCG@10"] == pytest.approx(fit["ndcg_after"], abs=1e-4)
