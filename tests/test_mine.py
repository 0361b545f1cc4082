"""Mining and hybrid augmentation: planted false negatives, extremes, determinism, resume, the sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandem.data import load_beir
from tandem.errors import UsageError
from tandem.mining import MineSettings, build_pools, done_qids, fit_platt, merge_rrf, mine
from tandem.train.lists import ListSampler, TrainingList, read_lists
from tests.conftest import generate_dataset, tandem, write_beir


class OverlapScorer:
    """A stand-in re-ranker with known judgement: logit = 3 * shared words - 6.

    Queries are 4 words of their positive, so a positive (and a near-copy of it) gets +6, a
    passage sharing no word -6: after ``sigmoid`` a near-copy is "clearly relevant".
    """

    name = "overlap-scorer"

    def predict(self, pairs, batch_size=32, progress=False):
        def words(t):
            return set(t.lower().replace(".", " ").split())

        return np.array([3.0 * len(words(q) & words(p)) - 6.0 for q, p in pairs], dtype=np.float32)


@pytest.fixture
def planted(tmp_path):
    """The tiny dataset plus a near-copy of train query q0's positive (one word changed)."""
    corpus, queries, qrels = generate_dataset(n_passages=60, n_queries=40)
    qid, pos = next(iter(qrels["train"].items()))
    pos = next(iter(pos))
    title, text = corpus[pos]
    corpus["copy"] = (title, text.replace(text.split()[0], "zebra", 1))
    return write_beir(tmp_path / "planted", corpus, queries, qrels), qid, pos


def _settings(**kw):
    base = dict(dense=False, bm25=True, top_n=30, calibration="sigmoid", query_batch=4, samples=5)
    return MineSettings(**{**base, **kw})


def _lists(path):
    return {o["qid"]: o for o in map(json.loads, open(path))}


def test_planted_false_negative_becomes_pseudo_positive(planted, tmp_path):
    data, qid, pos = planted
    res = mine(data, tmp_path / "lists.jsonl", reranker=OverlapScorer(), settings=_settings(samples=100, near_copy=0.0),
               progress=False)
    lst = _lists(res.lists)[qid]
    undenoised = {e["pid"] for e in lst["negatives"] if e["source"] == "undenoised"}
    denoised = {e["pid"] for e in lst["negatives"] if e["source"] == "denoised"}
    assert "copy" in undenoised  # retrieved, so it was a mined "negative" ...
    assert "copy" not in denoised  # ... removed from the denoised pool ...
    pseudo = [e for e in lst["positives"] if e.get("pseudo")]
    assert "copy" in [e["pid"] for e in pseudo] and all(e["score"] > 0.9 for e in pseudo)  # ... and offered as positive
    assert denoised and all(e["ce"] < 0.1 for e in lst["negatives"] if e["source"] == "denoised")
    for o in _lists(res.lists).values():  # labelled positives are never negatives
        labelled = {e["pid"] for e in o["positives"] if not e.get("pseudo")}
        assert not labelled & {e["pid"] for e in o["negatives"]}
    d = res.report["denoising"]
    assert d["pseudo_positives"] >= 1 and d["flagged_as_likely_false_negatives"] >= 1
    md = (tmp_path / "lists.report.md").read_text()
    assert "copy" in md and "Pseudo-positives" in md
    # the trainer reads them, and draws the pseudo-positive when asked to
    ds = load_beir(data, "train")
    lists = read_lists(res.lists, ds.corpus, ds.queries)
    i = [l.qid for l in lists].index(qid)
    s = ListSampler(lists, ds.queries, negatives=3, seed=0, pseudo_positive_prob=1.0)
    assert s.group(0, i).pids[0] in {e["pid"] for e in pseudo}
    assert ListSampler(lists, ds.queries, 3, 0, labelled_only=True).group(0, i).pids[0] == pos


def test_extreme_thresholds_give_the_undenoised_pool_back(planted, tmp_path):
    data, _, _ = planted
    plain = _lists(mine(data, tmp_path / "plain.jsonl", settings=_settings(), progress=False).lists)
    every = _lists(mine(data, tmp_path / "all.jsonl", reranker=OverlapScorer(),
                        settings=_settings(low=1.0, high=1.5), progress=False).lists)
    none = _lists(mine(data, tmp_path / "none.jsonl", reranker=OverlapScorer(),
                       settings=_settings(low=0.0, high=1.5), progress=False).lists)
    assert plain.keys() == every.keys() == none.keys()
    for qid, p in plain.items():
        und = [e["pid"] for e in p["negatives"]]
        assert [e["pid"] for e in every[qid]["negatives"] if e["source"] == "undenoised"] == und
        assert [e["pid"] for e in every[qid]["negatives"] if e["source"] == "denoised"] == und
        assert [e["pid"] for e in none[qid]["negatives"]] == und
        assert every[qid]["positives"] == none[qid]["positives"] == p["positives"]  # no pseudo-positives


def test_rank_mode_cuts(planted, tmp_path):
    data, qid, _ = planted
    lst = _lists(mine(data, tmp_path / "r.jsonl", reranker=OverlapScorer(), progress=False,
                      settings=_settings(denoise_by="rank", low_rank=5, high_rank=1, max_pseudo=1)).lists)[qid]
    cands = [e for e in lst["negatives"] if e["source"] == "undenoised"]
    den = [e for e in lst["negatives"] if e["source"] == "denoised"]
    # the re-ranker's top 5 are kept out of the denoised pool: one may be the labelled positive, one is the planted
    # near copy of it (in neither pool)
    assert "copy" not in {e["pid"] for e in lst["negatives"]} and len(den) <= len(cands) - 3
    assert sum(bool(e.get("pseudo")) for e in lst["positives"]) == 1


def test_mining_is_deterministic_and_resumes_after_a_kill(planted, tmp_path):
    data, _, _ = planted
    whole = mine(data, tmp_path / "a.jsonl", reranker=OverlapScorer(), settings=_settings(), progress=False)
    out = tmp_path / "b.jsonl"
    with pytest.raises(KeyboardInterrupt):
        mine(data, out, reranker=OverlapScorer(), settings=_settings(), progress=False, _stop={"retrieve": 4})
    cand = tmp_path / "b.mine" / "candidates.jsonl"
    n_done = len(done_qids(cand))
    assert 0 < n_done < whole.report["lists"]
    with open(cand, "a") as f:  # killed mid-line
        f.write('{"qid": "q9", "candidates": [{"pid": "d1", "ra')
    with pytest.raises(KeyboardInterrupt):
        mine(data, out, reranker=OverlapScorer(), settings=_settings(), progress=False, _stop={"score": 1})
    assert not out.exists()  # nothing half-written where the lists go
    assert len(done_qids(tmp_path / "b.mine" / "scores.jsonl")) >= 1
    resumed = mine(data, out, reranker=OverlapScorer(), settings=_settings(), progress=False)
    assert out.read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    assert resumed.report["denoising"] == whole.report["denoising"]
    # other settings: the work files are redone, not mixed in
    other = mine(data, out, reranker=OverlapScorer(), settings=_settings(top_n=5), progress=False)
    assert other.report["candidates_per_query"]["max"] <= 5


def test_merge_rrf_and_platt():
    merged = merge_rrf({"dense": {"a": 0.9, "b": 0.8, "c": 0.1}, "bm25": {"b": 12.0, "d": 3.0}}, top_n=3)
    assert [c["pid"] for c in merged] == ["b", "a", "d"]  # b: 1/62 + 1/61 beats a: 1/61
    assert merged[0]["dense_rank"] == 2 and merged[0]["bm25_rank"] == 1 and "bm25_rank" not in merged[1]
    one = merge_rrf({"bm25": {"x": 1.0, "y": 5.0}}, top_n=5)
    assert [(c["pid"], c["rank"], c["score"]) for c in one] == [("y", 1, 5.0), ("x", 2, 1.0)]
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000) * 3
    y = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 * x - 1.0)))).astype(float)
    a, b = fit_platt(x, y)
    assert abs(a - 0.5) < 0.05 and abs(b + 1.0) < 0.08


def test_pools_never_hold_labelled_positives():
    cands = [{"pid": p, "rank": r, "score": 1.0 / r} for r, p in enumerate("abcdef", start=1)]
    probs = dict(zip("abcdef", [0.99, 0.95, 0.5, 0.05, 0.01, 0.0]))
    pos, und, den = build_pools("q", cands, ["a"], probs, MineSettings(low=0.1, high=0.9))
    assert [e["pid"] for e in pos] == ["a", "b"] and pos[1]["pseudo"]
    pos, _, _ = build_pools("q", cands, ["c", "zz"], probs, MineSettings(low=0.1, high=0.9))
    assert pos[0] == {"pid": "c", "rank": 3} and pos[1] == {"pid": "zz"}  # a labelled positive: its rank if retrieved
    assert [e["pid"] for e in und] == list("bcdef") and [e["pid"] for e in den] == list("def")


def test_sampler_draws_from_both_pools_at_the_ratio():
    negs = [{"pid": f"u{i}", "source": "undenoised"} for i in range(10)]
    negs += [{"pid": f"u{i}", "source": "denoised"} for i in range(5, 10)]
    lst = TrainingList("q", [{"pid": "p"}, {"pid": "u0", "pseudo": True}], negs)
    s = ListSampler([lst], {"q": "query"}, negatives=4, seed=3, denoised_share=0.5, pseudo_positive_prob=0.0)
    for epoch in range(20):
        g = s.group(epoch, 0)
        assert g.pids[0] == "p" and len(set(g.pids)) == 5
        assert sum(p in {f"u{i}" for i in range(5, 10)} for p in g.pids[1:]) >= 2
    s1 = ListSampler([lst], {"q": "query"}, negatives=4, seed=3, denoised_share=1.0, pseudo_positive_prob=1.0)
    for epoch in range(20):
        g = s1.group(epoch, 0)
        assert g.pids[0] == "u0" and set(g.pids[1:]) <= {f"u{i}" for i in range(5, 10)}
    assert [s.group(e, 0).pids for e in range(5)] == [s.group(e, 0).pids for e in range(5)]


def test_sampler_draws_retrieved_positives_where_a_list_has_some():
    """positive_pool=retrieved: the positive is one the first stage ranked among the candidates where the list has
    one, any labelled one where it has none; lists with no ranked positive at all (mined before ranks were
    recorded) are refused, not silently sampled as before."""
    negs = [{"pid": f"n{i}", "rank": i, "source": "undenoised"} for i in range(1, 6)]
    some = TrainingList("q", [{"pid": "deep"}, {"pid": "top", "rank": 2}, {"pid": "deep2"}], negs)
    none = TrainingList("r", [{"pid": "a"}, {"pid": "b"}], negs)
    s = ListSampler([some, none], {"q": "x", "r": "y"}, negatives=3, seed=1, retrieved_positives=True)
    assert {s.group(e, 0).pids[0] for e in range(30)} == {"top"}
    assert {s.group(e, 1).pids[0] for e in range(30)} == {"a", "b"}
    every = ListSampler([some], {"q": "x"}, negatives=3, seed=1)  # the default: any labelled positive
    assert {every.group(e, 0).pids[0] for e in range(60)} == {"deep", "top", "deep2"}
    with pytest.raises(UsageError, match="mine the lists again"):
        ListSampler([none], {"r": "y"}, negatives=3, retrieved_positives=True)


def test_cli_mine_with_warmup_then_train(tiny_dataset, tiny_model_dir, tmp_path):
    out = tmp_path / "lists.jsonl"
    r = tandem("mine", "--data", str(tiny_dataset), "--out", str(out), "--retriever", str(tiny_model_dir),
               "--bm25", "--top-n", "8", "--warmup-reranker", "--warmup-steps", "2", "--low", "0.5", "--high", "0.99",
               "list_size=4", "batch_size=2", "query_max_length=16", "reranker_max_length=48", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "lists ->" in r.stderr and (tmp_path / "lists.report.md").exists()
    rep = json.loads((tmp_path / "lists.report.json").read_text())
    assert rep["lists"] == 10 and rep["denoising"]["calibration"]["method"] == "platt"
    assert (tmp_path / "lists.mine" / "warmup" / "reranker").is_dir()
    # the command again: the warm-up is done (same settings, same undenoised lists), the lists come out the same
    done, lists = (tmp_path / "lists.mine" / "warmup" / "done.json").stat().st_mtime_ns, out.read_text()
    r = tandem("mine", "--data", str(tiny_dataset), "--out", str(out), "--retriever", str(tiny_model_dir),
               "--bm25", "--top-n", "8", "--warmup-reranker", "--warmup-steps", "2", "--low", "0.5", "--high", "0.99",
               "list_size=4", "batch_size=2", "query_max_length=16", "reranker_max_length=48", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "lists.mine" / "warmup" / "done.json").stat().st_mtime_ns == done and out.read_text() == lists
    first = [json.loads(l)["negatives"][0] for l in open(out)]
    assert all({"pid", "rank", "score", "source"} <= e.keys() for e in first)
    r = tandem("train", "--data", str(tiny_dataset), "--lists", str(out), "--out", str(tmp_path / "t"), "--mode",
               "retriever", "--retriever", str(tiny_model_dir), "max_steps=1", "list_size=4", "batch_size=2",
               "query_max_length=16", "passage_max_length=32", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = tandem("mine", "--data", str(tiny_dataset), "--out", str(out), "--reranker", "x", "--warmup-reranker",
               check=False)
    assert r.returncode == 2 and "not both" in r.stderr


def test_a_warm_up_cannot_hold_out_other_queries_than_the_calibration(tmp_path):
    """The warm-up re-ranker holds out the calibration queries (the same fraction and salt): a training override
    with another heldout_salt, or a smaller heldout_fraction, would train it on queries it is then calibrated on,
    so it is refused before anything is read or trained."""
    from tandem.errors import ConfigError
    from tandem.train.api import warmup_reranker

    with pytest.raises(ConfigError, match="heldout_salt"):
        warmup_reranker("nowhere", tmp_path / "missing.jsonl", tmp_path / "w", 2, ["heldout_salt=other"],
                        heldout_salt="tandem-heldout")
    with pytest.raises(ConfigError, match="heldout_fraction"):
        warmup_reranker("nowhere", tmp_path / "missing.jsonl", tmp_path / "w", 2, ["heldout_fraction=0.05"],
                        heldout_fraction=0.1)
    assert not (tmp_path / "w").exists()


def test_every_mining_setting_reaches_the_cli_and_the_recipe(tiny_dataset, tmp_path):
    """One source per setting: MineSettings. `tandem mine --set KEY=VALUE` takes any of its fields, a recipe's
    `mine:` mapping too, and both refuse a name that is not one, saying which are."""
    out = tmp_path / "l.jsonl"
    r = tandem("mine", "--data", str(tiny_dataset), "--out", str(out), "--bm25", "--no-dense", "--top-n", "5",
               "--set", "samples=2", "--set", "query_batch=7")
    report = json.loads((tmp_path / "l.report.json").read_text())
    assert r.returncode == 0 and report["settings"]["samples"] == 2 and report["settings"]["query_batch"] == 7
    assert report["settings"]["top_n"] == 5  # the options still count, under --set
    r = tandem("mine", "--data", str(tiny_dataset), "--out", str(out), "--bm25", "--set", "nearcopy=0.5",
               check=False)
    assert r.returncode == 2 and "did you mean near_copy" in r.stderr
    assert "near_copy = 0.8" in tandem("mine-settings").stdout
    r = tandem("demo", "--dry-run", "--data", str(tiny_dataset), "mine={max_psuedo: 5}", check=False)
    assert r.returncode == 2 and "mine: unknown setting" in r.stderr and "max_pseudo" in r.stderr


def test_low_threshold_from_held_out_positives(planted, tmp_path):
    data, _, _ = planted
    res = mine(data, tmp_path / "q.jsonl", reranker=OverlapScorer(), progress=False,
               settings=_settings(low_from_positives=0.5, high=1.5))
    low = res.report["denoising"]["calibration"]["low_from_positives"]
    assert res.report["settings"]["low"] == low and 0.5 < low < 1.0  # positives share all 4 words: p ~ 0.9975
    for o in _lists(res.lists).values():
        assert all(e["ce"] < low for e in o["negatives"] if e["source"] == "denoised")
    assert "quantile of the held-out positives" in (tmp_path / "q.report.md").read_text()


def test_denoise_queries_scores_a_hash_chosen_subset(planted, tmp_path):
    """A budgeted denoising scores n queries (the held-out calibration ones first, the rest by a hash of the id,
    whatever the order) and writes their lists alone."""
    from tandem.mining import denoise_subset
    from tandem.train.lists import heldout_qids

    data, _, _ = planted
    full = _lists(mine(data, tmp_path / "all.jsonl", reranker=OverlapScorer(), settings=_settings(),
                       progress=False).lists)
    res = mine(data, tmp_path / "some.jsonl", reranker=OverlapScorer(), settings=_settings(denoise_queries=5),
               progress=False)
    some = _lists(res.lists)
    assert len(some) == 5 and set(some) < set(full)
    assert all(some[q] == full[q] for q in some)  # the same lists, fewer of them
    held = heldout_qids(list(full), 0.1)
    assert held <= set(some)
    qids = list(full)
    assert denoise_subset(qids, 5, held) == denoise_subset(qids[::-1], 5, held) == set(some)
    assert denoise_subset(qids, 0, held) is None and denoise_subset(qids, len(qids), held) is None


class LowScorer:
    """Scores every pair as clearly irrelevant: every scored candidate would be a denoised negative."""

    def predict(self, pairs, batch_size=32, progress=False):
        return np.full(len(pairs), -9.0, dtype=np.float32)


def test_near_copy_of_a_positive_is_never_a_negative(planted, tmp_path):
    """The false negative the augmentation exists to remove: a near copy of the labelled positive stays out of
    both pools whatever the denoiser scores it (it scores everything as irrelevant here)."""
    data, qid, pos = planted
    res = mine(data, tmp_path / "l.jsonl", reranker=LowScorer(), settings=_settings(), progress=False)
    lst = _lists(res.lists)[qid]
    negatives = {e["pid"] for e in lst["negatives"]}
    assert "copy" not in negatives and pos not in negatives
    assert any(e["source"] == "denoised" for e in lst["negatives"])  # the rest was denoised as usual
    assert res.report["denoising"]["near_copies_of_positives"] >= 1
    off = mine(data, tmp_path / "off.jsonl", reranker=LowScorer(), settings=_settings(near_copy=0.0), progress=False)
    assert "copy" in {e["pid"] for e in _lists(off.lists)[qid]["negatives"] if e["source"] == "denoised"}


class InvertedScorer(OverlapScorer):
    """A denoiser that has it backwards: the fewer words a passage shares with the query, the higher its logit."""

    name = "inverted-scorer"

    def predict(self, pairs, batch_size=32, progress=False):
        return -super().predict(pairs, batch_size, progress)


def test_backwards_denoiser_is_not_used(planted, tmp_path):
    """A re-ranker that scores held-out positives below their candidates (Platt slope <= 0, AUC <= 0.5) would
    make the likeliest false negatives the "denoised" ones: the lists keep the undenoised pool alone, no
    pseudo-positives, and the report and log say why."""
    data, _, _ = planted
    res = mine(data, tmp_path / "inv.jsonl", reranker=InvertedScorer(), progress=False,
               settings=_settings(calibration="platt", low_from_positives=0.1))
    cal = res.report["denoising"]["calibration"]
    assert cal["usable"] is False and cal["a"] <= 0 and cal["auc"] < 0.5 and "backwards" in cal["why"]
    assert res.report["denoising"]["denoised_negatives"] == 0 and res.report["denoising"]["pseudo_positives"] == 0
    lists = _lists(res.lists)
    assert lists and all(e["source"] == "undenoised" for o in lists.values() for e in o["negatives"])
    assert all(not e.get("pseudo") for o in lists.values() for e in o["positives"])
    assert "Not denoised" in (tmp_path / "inv.report.md").read_text()
    # the same data with the scorer the right way round is denoised
    good = mine(data, tmp_path / "ok.jsonl", reranker=OverlapScorer(), progress=False,
                settings=_settings(calibration="platt", low_from_positives=0.1))
    assert good.report["denoising"]["calibration"].get("usable",
                                                       True) and good.report["denoising"]["denoised_negatives"]


def test_calibration_max_queries_caps_the_calibration_set(planted, tmp_path):
    """calibration_max_queries: only that many held-out queries (a fixed hash order) are scored for calibration,
    with their extra labelled positives; a budgeted denoising then scores them and the rest of its queries."""
    from tandem.train.lists import heldout_qids

    data, _, _ = planted
    ds = load_beir(data, "train")
    held = heldout_qids(list(ds.qrels), 0.3)
    assert len(held) > 2
    kw = dict(calibration_fraction=0.3, denoise_queries=len(held) + 2)
    full = mine(data, tmp_path / "all.jsonl", reranker=OverlapScorer(), settings=_settings(**kw), progress=False)
    capped = mine(data, tmp_path / "cap.jsonl", reranker=OverlapScorer(),
                  settings=_settings(calibration_max_queries=2, **kw), progress=False)
    assert full.report["denoising"]["calibration"]["queries"] == len(held)
    assert capped.report["denoising"]["calibration"]["queries"] == 2
    lists = _lists(capped.lists)
    # the 2 calibration queries, then training queries by the denoising hash (never the uncalibrated held-out ones)
    assert len(lists) == len(held) + 2 and len(set(lists) & held) == 2
    # a rerun with the same cap picks the same queries
    again = mine(data, tmp_path / "cap2.jsonl", reranker=OverlapScorer(),
                 settings=_settings(calibration_max_queries=2, **kw), progress=False)
    assert set(_lists(again.lists)) == set(lists)
    # heldout_salt draws other calibration queries (a warm-up at the same salt holds out the same ones): a budget of
    # just them denoises those and no others
    salt = next(f"s{i}" for i in range(50) if heldout_qids(list(ds.qrels), 0.3, f"s{i}") != held)
    other = heldout_qids(list(ds.qrels), 0.3, salt)
    salted = mine(data, tmp_path / "salt.jsonl", reranker=OverlapScorer(), progress=False,
                  settings=_settings(calibration_fraction=0.3, heldout_salt=salt, denoise_queries=len(other)))
    assert set(_lists(salted.lists)) == other and salted.report["denoising"]["calibration"]["queries"] == len(other)


@pytest.mark.parametrize("pool", ["candidates", "positives"])
def test_calibration_scores_the_pool_the_lists_draw_from(tmp_path, pool):
    """calibration_pool candidates: a calibration query has its whole candidate list scored (whatever denoise_top)
    and nothing else, so its labelled positives there are calibrated against the negatives they compete with;
    positives (the earlier way): its first denoise_top candidates plus labelled positives from anywhere."""
    from tandem.mining import iter_lines
    from tandem.train.lists import heldout_qids

    corpus, queries, qrels = generate_dataset(n_passages=60, n_queries=40)
    for i, q in enumerate(qrels["train"]):  # a second positive the first stage is unlikely to find
        qrels["train"][q][sorted(corpus)[(7 * i + 3) % len(corpus)]] = 1
    data = write_beir(tmp_path / "two", corpus, queries, qrels)
    ds = load_beir(data, "train")
    held = heldout_qids(list(ds.qrels), 0.3)
    res = mine(data, tmp_path / "l.jsonl", reranker=OverlapScorer(), progress=False,
               settings=_settings(top_n=5, denoise_top=2, calibration_fraction=0.3, calibration_pool=pool))
    cands = {r["qid"]: [c["pid"] for c in r["candidates"]] for r in iter_lines(tmp_path / "l.mine" /
                                                                               "candidates.jsonl")}
    scored = {r["qid"]: r["pids"] for r in iter_lines(tmp_path / "l.mine" / "scores.jsonl")}
    outside = 0
    for q, pids in scored.items():
        if q not in held:
            assert pids == cands[q][:2]
        elif pool == "candidates":
            assert pids == cands[q]
        else:
            extra = [p for p in ds.qrels[q] if ds.qrels[q][p] > 0 and p not in cands[q][:2]][:5]
            assert pids == cands[q][:2] + extra
            outside += len(set(extra) - set(cands[q]))
    if pool == "positives":
        assert outside  # positives the first stage missed were scored
    cal = res.report["denoising"]["calibration"]
    assert cal["queries"] == len(held) and cal["pairs"] == sum(len(scored[q]) for q in held)


def test_high_threshold_from_held_out_precision(planted, tmp_path):
    """high_from_precision: the pseudo-positive threshold drops to where held-out candidates are labelled positives
    at that share, so a calibrated denoiser that is never 99% sure still adds the planted near copy."""
    from tandem.mining import high_from_precision

    p = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.2])
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    assert high_from_precision(p, y, 0.75) == pytest.approx(0.6)  # 4 of the top 5: the lowest cut at >= 75%
    assert high_from_precision(p, y, 0.75, min_pairs=6) is None  # 4 / 6 < 75%
    # not below the floor: 3 of the top 4
    assert high_from_precision(p, y, 0.75, min_pairs=3, floor=0.65) == pytest.approx(0.7)
    data, qid, _ = planted
    kw = dict(calibration="platt", high=0.999, calibration_fraction=0.3, top_n=10)
    fixed = mine(data, tmp_path / "a.jsonl", reranker=OverlapScorer(), progress=False, settings=_settings(**kw))
    chosen = mine(data, tmp_path / "b.jsonl", reranker=OverlapScorer(), progress=False,
                  settings=_settings(high_from_precision=0.75, **kw))
    assert fixed.report["denoising"]["pseudo_positives"] == 0
    cal = chosen.report["denoising"]["calibration"]
    assert 0.5 <= cal["high_from_precision"] < 0.999 and chosen.report["settings"]["high"] == cal["high_from_precision"]
    assert chosen.report["denoising"]["pseudo_positives"] > 0
    assert any(e.get("pseudo") and e["pid"] == "copy" for e in _lists(chosen.lists)[qid]["positives"])
    assert "high chosen where 75%" in (tmp_path / "b.report.md").read_text()


def test_denoise_depth_finds_denoised_negatives_below_the_candidates(planted, tmp_path):
    """A query whose candidates the denoiser finds all plausible gets its denoised negatives from deeper in the first
    stage (scored top_n at a time, until one is below low); its undenoised pool stays the candidates; resumable."""
    data, qid, pos = planted
    s = dict(top_n=3, low=0.05, high=1.5)  # below 0.05: a passage sharing at most one word with the query
    flat = mine(data, tmp_path / "flat.jsonl", reranker=OverlapScorer(), settings=_settings(**s), progress=False)
    deep = mine(data, tmp_path / "deep.jsonl", reranker=OverlapScorer(), settings=_settings(**s, denoise_depth=30),
                progress=False)
    a, b = _lists(flat.lists), _lists(deep.lists)
    assert a.keys() == b.keys()
    g = deep.report["denoising"]["deeper"]
    assert g["queries"] >= 1 and g["found"] >= 1 and g["scored_candidates"] >= g["denoised_negatives"] >= g["found"]
    gained = 0
    for q in a:
        und_a = [e for e in a[q]["negatives"] if e["source"] == "undenoised"]
        und_b = [e for e in b[q]["negatives"] if e["source"] == "undenoised"]
        assert und_a == und_b and a[q]["positives"] == b[q]["positives"]  # the candidates' pools are unchanged
        den_a = [e for e in a[q]["negatives"] if e["source"] == "denoised"]
        den_b = [e for e in b[q]["negatives"] if e["source"] == "denoised"]
        if den_a:
            assert den_b == den_a  # a query with denoised negatives among its candidates is not deepened
        elif den_b:
            gained += 1
            labelled = {e["pid"] for e in b[q]["positives"]}
            assert all(e["rank"] > 3 and e["ce"] < 0.05 for e in den_b)
            assert not {e["pid"] for e in den_b} & (labelled | {e["pid"] for e in und_b} | {"copy"})
    assert gained == g["found"]
    share = lambda r: r.report["denoising"]["training_lists_with_denoised_pool"]["share"]  # noqa: E731
    assert share(deep) > share(flat)
    assert "Below the candidates (`denoise_depth` 30)" in (tmp_path / "deep.report.md").read_text()
    # killed while scoring deeper: the rerun resumes and writes the same lists
    out = tmp_path / "kill.jsonl"
    with pytest.raises(KeyboardInterrupt):
        mine(data, out, reranker=OverlapScorer(), settings=_settings(**s, denoise_depth=30), progress=False,
             _stop={"deep": 1})
    assert not out.exists()
    mine(data, out, reranker=OverlapScorer(), settings=_settings(**s, denoise_depth=30), progress=False)
    assert out.read_bytes() == (tmp_path / "deep.jsonl").read_bytes()
    with pytest.raises(Exception, match="deeper than top_n"):
        _settings(top_n=30, denoise_depth=20).check()


def test_candidates_from_an_earlier_mining_are_reused_only_when_made_alike(planted, tmp_path, caplog):
    """`candidates_from`: a denoising run reuses the candidates an undenoised one mined (the recipe's denoise stage
    after its lists stage) instead of retrieving again, and gets the same lists as a run that retrieved them; made
    with another first stage they are not used."""
    data = planted[0]
    first = mine(data, tmp_path / "a" / "lists.jsonl", settings=_settings(), progress=False)
    cands = (tmp_path / "a" / "lists.mine" / "candidates.jsonl").read_text()
    caplog.set_level("INFO", logger="tandem.mine")
    reused = mine(data, tmp_path / "b" / "lists.jsonl", reranker=OverlapScorer(), settings=_settings(),
                  progress=False, candidates_from=first.lists)
    assert "reusing the" in caplog.text and reused.report["seconds"]["retrieve"] < 1.0
    assert (tmp_path / "b" / "lists.mine" / "candidates.jsonl").read_text() == cands
    fresh = mine(data, tmp_path / "c" / "lists.jsonl", reranker=OverlapScorer(), settings=_settings(), progress=False)
    assert _lists(reused.lists) == _lists(fresh.lists)
    caplog.clear()
    other = mine(data, tmp_path / "d" / "lists.jsonl", settings=_settings(top_n=10), progress=False,
                 candidates_from=first.lists)
    assert "of another first stage" in caplog.text
    assert all(len(o["negatives"]) <= 10 for o in _lists(other.lists).values())
