"""The trainer: gradient flow per mode, resume, gradient caching, bad input, saved models."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tandem.data import load_beir
from tandem.errors import ConfigError, DataFormatError, IncompatibleArtifactError, TandemError
from tandem.index.bm25 import bm25_search
from tandem.models.reranker import Reranker
from tandem.models.retriever import Retriever
from tandem.train import Trainer, lists_from_run, load_config, read_lists, write_lists
from tests.conftest import tandem


@pytest.fixture
def setup(tiny_dataset, tiny_model_dir):
    ds = load_beir(tiny_dataset, "train")
    run = bm25_search(ds.corpus, ds.split_queries(), k=20)
    lists = lists_from_run(run, ds.qrels, ds.corpus, top_n=10)
    return ds, lists, tiny_model_dir


def _cfg(**kw):
    base = dict(list_size=4, batch_size=2, max_steps=2, query_max_length=16, passage_max_length=32,
                reranker_max_length=48, allow_untrained_reranker=True, warmup_ratio=0.0)
    return load_config(None, {**base, **kw})


def _models(model_dir, cfg):
    torch.manual_seed(0)
    r = Retriever.from_pretrained(str(model_dir), temperature=cfg.temperature, query_max_length=16,
                                  passage_max_length=32)
    ce = Reranker.from_pretrained(str(model_dir), max_length=48)
    return r, ce


def _no_dropout(*models):
    for m in models:
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0


def test_config_rejects_unknown_and_wrong_types(tmp_path):
    assert load_config(None, ["list_size=16", "mode=static"]).list_size == 16
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(None, {"lsit_size": 3})
    with pytest.raises(ConfigError, match="list_size: expected int"):
        load_config(None, ["list_size=many"])
    with pytest.raises(ConfigError, match="mode must be one of"):
        load_config(None, {"mode": "both"})
    (tmp_path / "c.yaml").write_text("train:\n  list_size: 6\n  lr_retriever: 3.0e-5\n")
    cfg = load_config(tmp_path / "c.yaml", ["seed=3"])
    assert (cfg.list_size, cfg.lr_retriever, cfg.seed) == (6, 3e-5, 3)


def test_new_reranker_head_is_flagged_and_refused_in_joint(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(allow_untrained_reranker=False)
    r, ce = _models(model_dir, cfg)
    assert ce.settings.trained is False
    with pytest.raises(TandemError, match="untrained classification head.*--mode reranker"):
        Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, r, ce, progress=False)


@pytest.mark.parametrize("mode", ["joint", "static", "retriever", "reranker"])
def test_gradients_and_steps_per_mode(setup, tmp_path, mode):
    ds, lists, model_dir = setup
    cfg = _cfg(mode=mode, max_steps=1)
    r, ce = _models(model_dir, cfg)
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, r, ce, progress=False)
    before = {n: copy.deepcopy(m.state_dict()) for n, m in (("r", r), ("ce", ce))}
    trainer.micro_step(trainer._groups(0))
    r_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in r.parameters())
    ce_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in ce.parameters())
    assert r_grad == (mode in ("joint", "static", "retriever"))
    assert ce_grad == (mode in ("joint", "reranker"))  # static: the teacher gets no gradient
    trainer.optimizer_step()
    changed = {n: any(not torch.equal(v, m.state_dict()[k]) for k, v in before[n].items())
               for n, m in (("r", r), ("ce", ce))}
    assert changed["r"] == (mode != "reranker")
    assert changed["ce"] == (mode in ("joint", "reranker"))


def test_joint_kl_gradient_reaches_reranker(setup, tmp_path):
    """Dynamic: with the re-ranker's own CE switched off, KL alone still moves the re-ranker."""
    ds, lists, model_dir = setup
    cfg = _cfg(mode="joint")
    r, ce = _models(model_dir, cfg)
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, r, ce, progress=False)
    s_de = torch.randn(2, 4, requires_grad=True)
    s_ce = torch.randn(2, 4, requires_grad=True)
    trainer.losses(s_de, s_ce)["kl"].backward()
    assert s_ce.grad.abs().sum() > 0 and s_de.grad.abs().sum() > 0


def test_joint_supervised_retriever_term_with_in_batch_negatives(setup, tmp_path):
    """retriever_ce_weight adds the retriever's own CE; with in_batch_negatives other lists' passages count too."""
    from tandem.losses import group_ce, info_nce

    ds, lists, model_dir = setup
    q, p = torch.randn(2, 8), torch.randn(8, 8)
    s_de, s_ce = torch.einsum("bd,bgd->bg", q, p.view(2, 4, 8)), torch.randn(2, 4)
    for in_batch, expect in ((False, group_ce(s_de, 0.05)), (True, info_nce(q, p, 4, 0.05, in_batch=True))):
        cfg = _cfg(mode="joint", retriever_ce_weight=0.5, in_batch_negatives=in_batch)
        trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / str(in_batch), *_models(model_dir, cfg),
                          progress=False)
        terms = trainer.losses(s_de, s_ce, q, p)
        assert terms["retriever_ce"].item() == pytest.approx(0.5 * expect.item(), rel=1e-6)
        assert terms["loss"].item() == pytest.approx(sum(v.item() for k, v in terms.items() if k != "loss"), rel=1e-6)
    assert info_nce(q, p, 4, 0.05, in_batch=True).item() > group_ce(s_de, 0.05).item()  # more negatives, higher CE


def test_heldout_evaluation_over_the_corpus(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(mode="retriever", heldout_fraction=0.4, eval_corpus=True, max_steps=1)
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, *_models(model_dir, cfg), progress=False)
    held = trainer.evaluate_heldout()
    assert set(held["retriever_corpus"]) == {"nDCG@10", "RR@10", "R@100"}
    assert 0 <= held["retriever_corpus"]["nDCG@10"] <= 1
    # by hand: rank the whole corpus with the retriever for each held-out query
    r = trainer.retriever.eval()
    with torch.no_grad():
        p = r.passage_tower().encode(list(ds.corpus))
        q = r.query_tower().encode([ds.queries[l.qid] for l in trainer.heldout])
    hits = [ds.corpus.ids[int(np.argmax(q[i] @ p.T))] in {e["pid"] for e in l.positives}
            for i, l in enumerate(trainer.heldout)]
    assert held["retriever_corpus"]["RR@10"] >= np.mean(hits) - 1e-6  # rank-1 hits give RR 1
    result = trainer.train()
    assert set(result.heldout) == {"retriever", "retriever_corpus"}


def _step_grads(setup, tmp_path, name, **kw):
    ds, lists, model_dir = setup
    cfg = _cfg(**kw)
    r, ce = _models(model_dir, cfg)
    _no_dropout(r, ce)
    keep = r if cfg.mode != "reranker" else None
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / name, keep, ce, progress=False)
    terms = trainer.micro_step(trainer._groups(0), scale=0.5)
    models = ([("retriever", r)] if keep is not None else []) + [("reranker", ce)]
    return terms, {f"{k}.{n}": p.grad.clone() for k, m in models for n, p in m.named_parameters()
                   if p.grad is not None}


def _assert_same_step(a, b):
    (t0, g0), (t1, g1) = a, b
    assert t0.keys() == t1.keys()
    for k in t0:
        assert t0[k] == pytest.approx(t1[k], rel=1e-5, abs=1e-7), k
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], rtol=1e-3, atol=1e-5)  # padding widths differ per chunk


def test_chunked_gradients_equal_plain(setup, tmp_path):
    plain = _step_grads(setup, tmp_path, "plain", mode="joint")
    _assert_same_step(plain, _step_grads(setup, tmp_path, "chunk", mode="joint", chunk_size=3))


@pytest.mark.parametrize("kw", [dict(mode="joint"), dict(mode="joint", kl_routing="official"),
                                dict(mode="joint", retriever_ce_weight=0.5, in_batch_negatives=True, batch_size=3),
                                dict(mode="joint", retriever_ce_weight=0.5, kl_reduction="mean", batch_size=3),
                                dict(mode="joint", retriever_ce_weight=1.0, in_batch_negatives=True, chunk_size=5),
                                dict(mode="reranker", batch_size=3)])
def test_reranker_micro_lists_equal_plain(setup, tmp_path, kw):
    """The re-ranker run a list at a time (reranker_micro_lists) gives the single pass's loss terms and
    gradients, in both models, for each routing and the retriever's own loss with in-batch negatives."""
    plain = _step_grads(setup, tmp_path, "plain", **kw)
    micro = _step_grads(setup, tmp_path, "micro", reranker_micro_lists=1, **kw)
    _assert_same_step(plain, micro)
    if kw["mode"] == "joint":  # the KL's gradient did reach the retriever through the detached scores
        assert any(n.startswith("retriever.") for n in micro[1])


def test_killed_run_resumes_to_same_weights(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(mode="joint", max_steps=5, save_every=2, grad_accum=1)

    def final_weights(out, stop_after=None):
        r, ce = _models(model_dir, cfg)
        t = Trainer(cfg, ds.corpus, ds.queries, lists, out, r, ce, progress=False)
        if stop_after is not None:
            t.train(stop_after=stop_after)  # "killed" after 3 steps: the latest checkpoint is step 2
            r, ce = _models(model_dir, cfg)
            t = Trainer(cfg, ds.corpus, ds.queries, lists, out, r, ce, progress=False)
            t.train(resume=True)
        else:
            t.train()
        return {**r.state_dict(), **{f"ce.{k}": v for k, v in ce.state_dict().items()}}

    torch.manual_seed(1)
    a = final_weights(tmp_path / "a")
    torch.manual_seed(1)
    b = final_weights(tmp_path / "b", stop_after=3)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == [1, 2, 3, 4, 5]
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-0000005"
    # a checkpoint made with other settings is refused
    other = load_config(None, {**cfg.to_dict(), "list_size": 3})
    r, ce = _models(model_dir, other)
    with pytest.raises(IncompatibleArtifactError, match="list_size"):
        Trainer(other, ds.corpus, ds.queries, lists, tmp_path / "b", r, ce, progress=False).train(resume=True)
    # ... and so is one made from another model
    from tests.conftest import make_tiny_bert

    other_dir = make_tiny_bert(tmp_path / "other", seed=3)
    r2 = Retriever.from_pretrained(str(other_dir), temperature=cfg.temperature, query_max_length=16,
                                   passage_max_length=32)
    with pytest.raises(IncompatibleArtifactError, match="models"):
        Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / "b", r2, ce, progress=False).train(resume=True)


def test_saved_models_load_in_sentence_transformers(setup, tmp_path):
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from transformers import AutoModelForSequenceClassification

    ds, lists, model_dir = setup
    cfg = _cfg(mode="joint", max_steps=1)
    r, ce = _models(model_dir, cfg)
    Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, r, ce, progress=False).train()
    texts = ["protein cell gene", "heart blood therapy"]
    ours = Retriever.from_pretrained(tmp_path / "retriever")
    st = SentenceTransformer(str(tmp_path / "retriever"), device="cpu")
    np.testing.assert_allclose(ours.passage_tower().encode(texts), st.encode(texts), atol=1e-5)
    back = Reranker.from_pretrained(tmp_path / "reranker")
    assert back.settings.trained is True
    pairs = [("protein cell", "protein cell gene cancer"), ("heart", "blood therapy risk")]
    logits = back.predict(pairs)
    cross = CrossEncoder(str(tmp_path / "reranker"), device="cpu")
    theirs = cross.predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(logits, theirs, atol=1e-5)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reranker").eval()
    with torch.no_grad():
        hf_logits = hf(**back.tokenize([q for q, _ in pairs], [p for _, p in pairs])).logits.squeeze(-1)
    np.testing.assert_allclose(logits, hf_logits.numpy(), atol=1e-5)


def test_separate_towers_save_and_load(tiny_model_dir, tmp_path):
    r = Retriever.from_pretrained(str(tiny_model_dir), shared=False, query_prefix="query: ")
    assert r.query_encoder is not r.passage_encoder
    r.save(tmp_path / "r")
    back = Retriever.from_pretrained(tmp_path / "r")
    assert back.settings.shared is False and back.settings.query_prefix == "query: "
    with torch.no_grad():
        torch.testing.assert_close(back.score(["gene"], ["protein cell", "heart"]), r.score(["gene"], ["protein cell",
                                                                                                       "heart"]))


def test_bad_lists(setup, tmp_path):
    ds, lists, _ = setup
    write_lists(tmp_path / "ok.jsonl", lists)
    assert len(read_lists(tmp_path / "ok.jsonl", ds.corpus, ds.queries)) == len(lists)
    cases = {
        "unknown pid": ('{"qid": "q0", "positives": [{"pid": "nope"}], "negatives": [{"pid": "d1"}]}',
                        "not in the corpus"),
        "unknown qid": ('{"qid": "zz", "positives": [{"pid": "d1"}], "negatives": [{"pid": "d2"}]}',
                        "not in queries.jsonl"),
        "no positive": ('{"qid": "q0", "positives": [], "negatives": [{"pid": "d2"}]}', "no positive"),
        "no negatives": ('{"qid": "q0", "positives": [{"pid": "d1"}], "negatives": []}', "no negatives"),
    }
    for name, (line, msg) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        path.write_text((tmp_path / "ok.jsonl").read_text() + line + "\n")
        with pytest.raises(DataFormatError, match=msg) as err:
            read_lists(path, ds.corpus, ds.queries)
        assert err.value.line == len(lists) + 1
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        read_lists(tmp_path / "empty.jsonl", ds.corpus, ds.queries)


def test_cli_train_reranker_then_joint(tiny_dataset, tiny_model_dir, tmp_path):
    tandem("bm25", "--data", tiny_dataset, "--split", "train", "--out", tmp_path / "bm25.trec", "--k", 20)
    common = ["--data", tiny_dataset, "list_size=4", "batch_size=2", "passage_max_length=32",
              "reranker_max_length=48", "query_max_length=16"]
    tandem("train", "--run", tmp_path / "bm25.trec", "--top-n", 10, "--mode", "reranker", "--out", tmp_path / "ce",
           "--reranker", tiny_model_dir, *common, "max_steps=2")
    assert (tmp_path / "ce" / "reranker" / "config.json").exists()
    proc = tandem("train", "--lists", tmp_path / "ce" / "lists.jsonl", "--out", tmp_path / "joint",
                  "--retriever", tiny_model_dir, "--reranker", tmp_path / "ce" / "reranker", *common, "max_steps=2",
                  "heldout_fraction=0.2")
    assert "held-out lists, retriever" in proc.stderr
    for f in ("retriever/modules.json", "reranker/model.safetensors", "config.json", "metrics.jsonl",
              "checkpoints/latest", "retriever/README.md", "reranker/README.md"):
        assert (tmp_path / "joint" / f).exists(), f
    bad = tandem("train", "--lists", tmp_path / "ce" / "lists.jsonl", "--out", tmp_path / "x", *common,
                 "lsit_size=3", check=False)
    assert bad.returncode == 2 and "unknown setting" in bad.stderr


def test_kl_gate_keeps_kl_off_the_retriever_until_the_reranker_wins(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(mode="joint", kl_gate=True, heldout_fraction=0.3)
    r, ce = _models(model_dir, cfg)
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, r, ce, progress=False)
    assert trainer.gate_open is False
    trainer.micro_step(trainer._groups(0))
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in r.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ce.parameters())
    held = trainer.evaluate_heldout()
    assert trainer.gate_open == (held["reranker"]["nDCG@10"] > held["retriever"]["nDCG@10"])
    trainer.gate_open = True
    trainer.micro_step(trainer._groups(0))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in r.parameters())
    with pytest.raises(ConfigError, match="kl_gate needs heldout_fraction"):
        _cfg(kl_gate=True)


@pytest.mark.gpu
def test_joint_step_on_gpu_with_bf16(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(mode="joint", device="cuda", max_steps=2)
    r, ce = _models(model_dir, cfg)
    result = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, r, ce, progress=False).train()
    assert result.steps == 2 and all(np.isfinite(v) for v in result.final_losses.values())


def test_heldout_list_ce_of_the_retriever_is_at_its_training_temperature(setup, tmp_path):
    """The held-out lists' continuous measures (ce, p_pos) of the retriever are those of the list softmax its loss
    uses, s / tau: on raw dot products (tau = 1) every list looks nearly uniform (p_pos ~ 1 / list size)."""
    from tandem.train.joint import list_metrics

    ds, lists, model_dir = setup
    cfg = _cfg(mode="retriever", heldout_fraction=0.4, max_steps=1, temperature=0.05)
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / "t", *_models(model_dir, cfg), progress=False)
    groups = [trainer.held_sampler.group(0, i) for i in range(len(trainer.heldout))]
    queries, passages, _ = trainer._texts(groups)
    trainer.retriever.eval()
    with torch.no_grad():
        raw = trainer.retriever.score(queries, passages).float()
    got = trainer._heldout_metrics(8)["retriever"]
    want = list_metrics(raw / 0.05)
    assert got["ce"] == pytest.approx(want["ce"], rel=1e-4) and got["p_pos"] == pytest.approx(want["p_pos"], rel=1e-4)
    assert got["nDCG@10"] == pytest.approx(list_metrics(raw)["nDCG@10"])  # the ranking measures do not change
    assert abs(got["p_pos"] - list_metrics(raw)["p_pos"]) > 1e-3


def test_heldout_lists_are_keyed_by_query_and_their_evaluation_can_be_capped(setup, tmp_path):
    """Held-out lists are those whose query id hashes into the fraction; heldout_eval_lists evaluates on fewer of
    them, and the rest still never reach training."""
    from tandem.train.lists import heldout_qids

    ds, lists, model_dir = setup
    cfg = _cfg(mode="retriever", heldout_fraction=0.4, max_steps=1)
    full = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / "a", *_models(model_dir, cfg), progress=False)
    held = heldout_qids([lst.qid for lst in lists], 0.4)
    assert {lst.qid for lst in full.heldout} == held and not held & {lst.qid for lst in full.lists}
    capped_cfg = _cfg(mode="retriever", heldout_fraction=0.4, max_steps=1, heldout_eval_lists=1)
    capped = Trainer(capped_cfg, ds.corpus, ds.queries, lists, tmp_path / "b", *_models(model_dir, capped_cfg),
                     progress=False)
    assert len(capped.heldout) == 1 and capped.heldout[0].qid in held
    assert [lst.qid for lst in capped.lists] == [lst.qid for lst in full.lists]
    # another salt, another draw (the recipe's one per seed), still never trained on
    qids = [lst.qid for lst in lists]
    salt = next(f"s{i}" for i in range(50) if heldout_qids(qids, 0.4, f"s{i}") != held)
    salted_cfg = _cfg(mode="retriever", heldout_fraction=0.4, max_steps=1, heldout_salt=salt)
    salted = Trainer(salted_cfg, ds.corpus, ds.queries, lists, tmp_path / "c", *_models(model_dir, salted_cfg),
                     progress=False)
    other = heldout_qids(qids, 0.4, salt)
    assert {lst.qid for lst in salted.heldout} == other and not other & {lst.qid for lst in salted.lists}


def test_a_pretrained_cross_encoder_is_the_starting_point(setup, tmp_path):
    """A saved sentence-transformers CrossEncoder (or a hub cross-encoder) given as --reranker is loaded as it is,
    with the same scores, even where reranker_arch=gated would grow a new re-ranker from a bare body."""
    st = pytest.importorskip("sentence_transformers")
    from tandem.models.gated import GatedReranker
    from tandem.train.api import load_models

    ds, lists, model_dir = setup
    ce = st.CrossEncoder(str(model_dir), num_labels=1, max_length=64)
    ce.save(str(tmp_path / "ce"))
    pairs = [("protein cell", "protein cell gene cancer"), ("heart", "mouse tumor")]
    want = ce.predict(pairs, activation_fn=torch.nn.Identity())
    _, loaded = load_models(_cfg(mode="reranker", reranker_arch="gated"), None, str(tmp_path / "ce"), ds.corpus)
    assert not isinstance(loaded, GatedReranker) and loaded.settings.trained
    np.testing.assert_allclose(loaded.eval().predict(pairs), want, atol=1e-4)
    _, grown = load_models(_cfg(mode="reranker", reranker_arch="gated"), None, str(model_dir), ds.corpus)
    assert isinstance(grown, GatedReranker)  # a bare encoder body still grows a gated re-ranker


def test_attention_dropout_setting(setup, tmp_path):
    """attention_dropout sets the dropout on attention probabilities of both models (and only those); a body
    without BERT-style attention modules is refused rather than left as it was."""
    from tandem.train.joint import set_attention_dropout

    ds, lists, model_dir = setup
    cfg = _cfg(mode="joint", attention_dropout=0.0)
    r, ce = _models(model_dir, cfg)
    Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / "t", r, ce, progress=False)
    for m in (r, ce):
        drops = {n: mod.p for n, mod in m.named_modules() if isinstance(mod, torch.nn.Dropout)}
        assert {n for n, p in drops.items() if p == 0.0} == {n for n in drops if n.endswith("attention.self.dropout")}
        assert any(p > 0 for p in drops.values())  # hidden-state dropout kept
    cfg = _cfg(mode="joint", attention_dropout=0.0, reranker_attention_dropout=0.1)
    r, ce = _models(model_dir, cfg)
    Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / "t2", r, ce, progress=False)
    ps = {k: {mod.p for n, mod in m.named_modules() if n.endswith("attention.self.dropout")}
          for k, m in (("retriever", r), ("reranker", ce))}
    assert ps == {"retriever": {0.0}, "reranker": {0.1}}
    with pytest.raises(TandemError, match="attention_dropout"):
        set_attention_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)), 0.0)


class _ScriptedValidator:
    """A validator whose scores follow a script (one per call) and which keeps a copy of each state it scored."""

    depth = 10

    def __init__(self, scores):
        self.scores, self.states = list(scores), []

    def __len__(self):
        return 5

    def can_score(self, kind):
        return True

    def retriever(self, model):
        self.states.append(copy.deepcopy(model.state_dict()))
        score = self.scores[len(self.states) - 1]
        if isinstance(score, dict):  # per-query scores
            return {"nDCG@10": sum(score.values()) / len(score), "_per_query": score}
        return {"nDCG@10": score, "_per_query": {}}

    reranker = retriever


def _saved_retriever_state(out):
    r = Retriever.from_pretrained(str(out / "retriever"))
    return r.state_dict()


def _same_state(a, b):
    return all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_keep_best_saves_the_best_validated_state_not_the_last(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(mode="retriever", heldout_fraction=0.3, keep_best=True, eval_every=1, max_steps=3, lr_retriever=1e-3)
    v = _ScriptedValidator([0.5, 0.6, 0.8, 0.7])  # steps 0, 1, 2, 3: step 2 is the best
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, *_models(model_dir, cfg), progress=False,
                      validator=v)
    result = trainer.train()
    val = result.validation["retriever"]
    assert [h["step"] for h in val["history"]] == [0, 1, 2, 3] and val["best_step"] == 2 and val["restored"]
    assert not _same_state(v.states[2], v.states[3])  # training moved the weights after the best step
    assert _same_state(_saved_retriever_state(tmp_path), v.states[2])
    log = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["best"] == {"retriever": {"step": 2, "nDCG@10": 0.8}}


def test_keep_best_keeps_the_start_when_training_only_hurts_and_patience_stops_early(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(mode="retriever", heldout_fraction=0.3, keep_best=True, eval_every=1, patience=2, max_steps=10)
    v = _ScriptedValidator([0.5, 0.4, 0.3, 0.2, 0.1])
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, *_models(model_dir, cfg), progress=False,
                      validator=v)
    result = trainer.train()
    assert result.steps == 2  # two validations without a new best, then stop
    assert result.validation["retriever"]["best_step"] == 0
    assert _same_state(_saved_retriever_state(tmp_path), v.states[0])  # the model it started from
    # a tie keeps the earlier state
    v2 = _ScriptedValidator([0.5, 0.5, 0.5])
    cfg2 = _cfg(mode="retriever", heldout_fraction=0.3, keep_best=True, eval_every=1, max_steps=2)
    r2 = Trainer(cfg2, ds.corpus, ds.queries, lists, tmp_path / "tie", *_models(model_dir, cfg2), progress=False,
                 validator=v2).train()
    assert r2.validation["retriever"]["best_step"] == 0


def test_keep_best_survives_a_kill_and_validates_over_the_corpus(setup, tmp_path):
    ds, lists, model_dir = setup
    cfg = _cfg(mode="retriever", heldout_fraction=0.3, keep_best=True, eval_every=1, max_steps=4, save_every=1)
    first = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, *_models(model_dir, cfg), progress=False)
    first.train(stop_after=2)  # killed after step 2's checkpoint
    before = json.loads((tmp_path / "best" / "state.json").read_text())["retriever"]
    assert [h["step"] for h in before["history"]] == [0, 1, 2]
    again = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path, *_models(model_dir, cfg), progress=False)
    result = again.train(resume=True)
    hist = result.validation["retriever"]["history"]
    assert [h["step"] for h in hist] == [0, 1, 2, 3, 4] and hist[:3] == before["history"]
    best = max(hist, key=lambda h: h["nDCG@10"])
    assert result.validation["retriever"]["best"] == pytest.approx(best["nDCG@10"], abs=1e-6)
    # the saved model scores what its best validation said (the held-out queries over the whole corpus)
    from tandem.train.validation import StageValidator

    qrels = {l.qid: {e["pid"]: 1 for e in l.positives} for l in again.heldout}
    saved = Retriever.from_pretrained(str(tmp_path / "retriever"))
    score = StageValidator({q: ds.queries[q] for q in qrels}, qrels, ds.corpus).retriever(saved)["nDCG@10"]
    assert score == pytest.approx(best["nDCG@10"], abs=1e-4)


def test_keep_best_validates_a_reranker_over_a_first_stage_run(setup, tmp_path):
    from tandem.data import read_run, write_run
    from tandem.eval.metrics import evaluate
    from tandem.rerank import rerank

    ds, lists, model_dir = setup
    run = bm25_search(ds.corpus, ds.split_queries(), k=20)
    write_run(tmp_path / "first.trec", run)
    cfg = _cfg(mode="reranker", heldout_fraction=0.3, keep_best=True, max_steps=2,
               validation_run=str(tmp_path / "first.trec"), validation_depth=5)
    trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / "out", None, _models(model_dir, cfg)[1],
                      progress=False)
    result = trainer.train()
    val = result.validation["reranker"]
    assert [h["step"] for h in val["history"]] == [0, 2] and all("source_re-ranked top-5" in h for h in val["history"])
    # by hand: the saved re-ranker over the first stage's top-5 of the held-out queries
    held = {l.qid for l in trainer.heldout}
    qrels = {q: {e["pid"]: 1 for e in l.positives} for l in trainer.heldout for q in [l.qid]}
    ce = Reranker.from_pretrained(str(tmp_path / "out" / "reranker"))
    first = {q: d for q, d in read_run(tmp_path / "first.trec").items() if q in held}
    ndcg = evaluate(rerank(first, ds.queries, ds.corpus, ce, 5), qrels)["nDCG@10"]
    assert val["best"] == pytest.approx(ndcg, abs=1e-4)
    # without a run to re-rank, the re-ranker is judged on its held-out lists
    cfg2 = _cfg(mode="reranker", heldout_fraction=0.3, keep_best=True, max_steps=1)
    r2 = Trainer(cfg2, ds.corpus, ds.queries, lists, tmp_path / "out2", None, _models(model_dir, cfg2)[1],
                 progress=False).train()
    assert all("source_held-out lists" in h for h in r2.validation["reranker"]["history"])
    with pytest.raises(ConfigError):
        _cfg(mode="retriever", patience=2)  # patience needs keep_best


def test_keep_best_takes_a_later_state_over_the_start_only_on_a_significant_gain(setup, tmp_path):
    ds, lists, model_dir = setup
    start = {f"q{i}": 0.5 for i in range(30)}
    noise = {**start, "q0": 0.9}  # a higher mean from one query: no gain
    gain = {q: 0.7 for q in start}  # every query better
    for scores, best in (([start, noise], 0), ([start, noise, gain], 2)):
        cfg = _cfg(mode="retriever", heldout_fraction=0.3, keep_best=True, eval_every=1, max_steps=len(scores) - 1)
        v = _ScriptedValidator(scores)
        out = tmp_path / str(len(scores))
        result = Trainer(cfg, ds.corpus, ds.queries, lists, out, *_models(model_dir, cfg), progress=False,
                         validator=v).train()
        val = result.validation["retriever"]
        assert val["best_step"] == best, scores
        assert val["history"][1]["p_vs_start"] > 0.1
        assert _same_state(_saved_retriever_state(out), v.states[best])
    # keep_best_p = 1: the mean alone decides, and the noise wins
    cfg = _cfg(mode="retriever", heldout_fraction=0.3, keep_best=True, eval_every=1, max_steps=1, keep_best_p=1.0)
    r = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / "mean", *_models(model_dir, cfg), progress=False,
                validator=_ScriptedValidator([start, noise])).train()
    assert r.validation["retriever"]["best_step"] == 1
