"""The pieces validation rests on: held-out queries keyed by id, paired tests, list settings, eval split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tandem.errors import ConfigError
from tandem.eval.stats import paired_test
from tandem.train.lists import heldout_indices, heldout_qids


def test_heldout_queries_depend_on_the_id_alone():
    qids = [f"q{i}" for i in range(2000)]
    held = heldout_qids(qids, 0.1)
    assert 150 < len(held) < 250  # about a tenth
    # dropping queries or reordering them never moves another query in or out
    rest = [q for q in qids if q != "q7"][::-1]
    assert heldout_qids(rest, 0.1) == held - {"q7"}
    assert heldout_indices(rest, 0.1) == [i for i, q in enumerate(rest) if q in held]
    # a handful of queries: the smallest hashes, at least one, never all
    assert len(heldout_qids(["a", "b", "c"], 0.1)) == 1 and len(heldout_qids(["a", "b"], 0.9)) == 1
    assert heldout_qids(qids, 0.0) == set() and heldout_qids(["only"], 0.5) == set()


def test_paired_test_against_scipy_and_by_hand():
    from scipy import stats

    rng = np.random.default_rng(0)
    a = {i: float(v) for i, v in enumerate(rng.random(200))}
    b = {i: a[i] - 0.03 + 0.1 * float(rng.standard_normal()) for i in a}
    t = paired_test(a, b)
    ref = stats.ttest_rel(list(a.values()), list(b.values()))
    assert t["t"] == pytest.approx(ref.statistic) and t["n"] == 200
    assert t["p"] < 0.01 and abs(t["p"] - ref.pvalue) < 0.01  # randomisation and t agree at this n
    assert t["wins"] + t["losses"] == 200 and t["diff"] == pytest.approx(t["mean_a"] - t["mean_b"])
    same = paired_test(a, dict(a))
    assert same["p"] == 1.0 and same["diff"] == 0.0
    # by hand: two queries, differences +1 and +1: of the 4 sign patterns 2 are as extreme -> p ~ 0.5
    small = paired_test({"x": 1.0, "y": 1.0}, {"x": 0.0, "y": 0.0}, rounds=40_000)
    assert small["p"] == pytest.approx(0.5, abs=0.02) and math.isinf(small["t"])
    # only shared queries count; none shared is an error
    assert paired_test({"x": 1.0, "z": 5.0}, {"x": 0.5})["n"] == 1
    with pytest.raises(Exception, match="share no query"):
        paired_test({"x": 1.0}, {"y": 1.0})


def test_list_settings_and_eval_split(tmp_path):
    from tandem.recipe import eval_split_of, load_recipe, rerank_depths

    assert load_recipe(None, ["rerank_depths=10,20"]).rerank_depths == [10, 20]
    assert load_recipe(None, {"rerank_depths": [5]}).rerank_depths == [5]
    assert load_recipe(None, ["rerank_depths=[3, 4]"]).rerank_depths == [3, 4]
    with pytest.raises(ConfigError, match="list of integers"):
        load_recipe(None, ["rerank_depths=ten"])
    with pytest.raises(ConfigError, match="rerank_k"):
        rerank_depths(load_recipe(None, {"rerank_depths": [50], "rerank_k": 20}))
    from tests.conftest import generate_dataset, write_beir

    corpus, queries, qrels = generate_dataset()
    no_test = write_beir(tmp_path / "nt", corpus, queries, {"train": qrels["train"], "dev": qrels["test"]})
    assert eval_split_of(load_recipe(None, {}), no_test) == "dev"
    with_test = write_beir(tmp_path / "wt", corpus, queries, qrels)
    assert eval_split_of(load_recipe(None, {}), with_test) == "test"
    only_train = write_beir(tmp_path / "ot", corpus, queries, {"train": qrels["train"]})
    with pytest.raises(ConfigError, match="neither a test nor a dev split"):
        eval_split_of(load_recipe(None, {}), only_train)


def test_paired_test_does_not_depend_on_the_order_of_the_queries():
    """The sign flips are drawn by position: the queries are put in one order first, so the same scores in another
    dict order (validation queries once came from a set, whose order changes from process to process) give the same
    p to the last digit."""
    import random

    rng = random.Random(5)
    a = {f"q{i}": rng.random() for i in range(200)}
    b = {q: v + rng.gauss(0.015, 0.2) for q, v in a.items()}  # a small difference: p in the middle, not at its floor
    keys = list(a)
    random.Random(1).shuffle(keys)
    t, shuffled = paired_test(a, b), paired_test({q: a[q] for q in keys}, b)
    assert 0.01 < t["p"] < 0.99 and t == shuffled
