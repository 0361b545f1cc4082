from __future__ import annotations

import math

import pytest

from tandem.eval.metrics import evaluate, evaluate_per_query, format_table


def test_hand_computed_values():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"z": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0, "y": 1.0, "b": 0.5}, "q2": {"z": 1.0}}
    per = evaluate_per_query(run, qrels, ["nDCG@10", "RR@10", "R@2"])
    # q1: relevant at ranks 2 and 4. DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert per["q1"]["nDCG@10"] == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert per["q1"]["RR@10"] == pytest.approx(0.5)
    assert per["q1"]["R@2"] == pytest.approx(0.5)
    assert per["q2"] == {"nDCG@10": 1.0, "RR@10": 1.0, "R@2": 1.0}
    mean = evaluate(run, qrels, ["RR@10"])
    assert mean["RR@10"] == pytest.approx(0.75)


def test_unanswered_queries_count_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert evaluate({"q1": {"a": 1.0}}, qrels, ["nDCG@10"])["nDCG@10"] == pytest.approx(0.5)
    assert evaluate({}, qrels, ["nDCG@10"])["nDCG@10"] == 0.0


def test_format_table():
    text = format_table({"bm25": {"nDCG@10": 0.5, "RR@10": 0.25}}, ["nDCG@10", "RR@10"])
    assert "bm25" in text and "0.5000" in text and "0.2500" in text
