"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tandem.losses import group_ce, info_nce, list_kl, pointwise_bce, rocketqa_kl


def test_group_ce_by_hand():
    scores = torch.tensor([[2.0, 0.0, 0.0]])
    expect = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert group_ce(scores).item() == pytest.approx(expect, rel=1e-6)
    assert group_ce(scores * 2, tau=2.0).item() == pytest.approx(expect, rel=1e-6)


def test_kl_by_hand_and_reductions():
    t = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    s = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    expect = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert list_kl(t, s).item() == pytest.approx(expect, rel=1e-6)
    assert list_kl(t, s, reduction="mean").item() == pytest.approx(expect / 3, rel=1e-6)
    assert list_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # direction: KL(P_ce || P_de) vs KL(P_de || P_ce); tau_de divides the retriever's scores
    ce, de = t, s * 0.1
    assert rocketqa_kl(ce, de, tau_de=0.1).item() == pytest.approx(expect, rel=1e-5)
    reverse = 0.25 * math.log(0.5) + 0.5 * math.log(2)
    assert rocketqa_kl(ce, de, tau_de=0.1, direction="de_to_ce").item() == pytest.approx(reverse, rel=1e-5)
    with pytest.raises(ValueError):
        rocketqa_kl(ce, de, direction="sideways")


def test_kl_direction_is_not_symmetric():
    """Distributions that are not permutations of each other: the two directions differ, so a swap fails here."""
    p = torch.tensor([[0.8, 0.15, 0.05]])
    q = torch.tensor([[0.3, 0.3, 0.4]])
    forward = sum(a * math.log(a / b) for a, b in zip(p[0].tolist(), q[0].tolist()))  # KL(p || q)
    backward = sum(b * math.log(b / a) for a, b in zip(p[0].tolist(), q[0].tolist()))  # KL(q || p)
    assert abs(forward - backward) > 0.01
    ce, de = torch.log(p), torch.log(q) * 0.05  # the retriever's scores are divided by tau = 0.05
    assert rocketqa_kl(ce, de, tau_de=0.05).item() == pytest.approx(forward, rel=1e-5)
    assert rocketqa_kl(ce, de, tau_de=0.05, direction="de_to_ce").item() == pytest.approx(backward, rel=1e-5)
    assert list_kl(torch.log(p), torch.log(q)).item() == pytest.approx(forward, rel=1e-5)
    # teacher_temperature divides the re-ranker's logits, in either direction
    assert rocketqa_kl(ce * 2, de, tau_de=0.05, tau_ce=2.0).item() == pytest.approx(forward, rel=1e-5)
    assert rocketqa_kl(ce * 2, de, tau_de=0.05, direction="de_to_ce", tau_ce=2.0).item() == \
        pytest.approx(backward, rel=1e-5)
    assert rocketqa_kl(ce * 2, de, tau_de=0.05).item() != pytest.approx(forward, rel=1e-3)


def test_list_metrics_break_ties_against_the_positive():
    from tandem.train.joint import list_metrics

    flat = list_metrics(torch.zeros(5, 4))  # a constant scorer learns nothing: the positive ranks last
    assert flat["acc@1"] == 0.0 and flat["nDCG@10"] == pytest.approx(1 / math.log2(5))
    assert flat["ce"] == pytest.approx(math.log(4)) and flat["p_pos"] == pytest.approx(0.25)
    good = list_metrics(torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.5, 0.0]]))
    assert good["acc@1"] == 0.5 and good["MRR@10"] == pytest.approx(0.75)
    assert 0 < good["p_pos"] < 1 and good["ce"] > 0


def test_kl_gradients_reach_both_sides():
    ce = torch.randn(2, 4, requires_grad=True)
    de = torch.randn(2, 4, requires_grad=True)
    rocketqa_kl(ce, de).backward()
    assert ce.grad.abs().sum() > 0 and de.grad.abs().sum() > 0


def test_pointwise_bce_by_hand():
    scores = torch.tensor([[0.0, 0.0]])
    assert pointwise_bce(scores).item() == pytest.approx(math.log(2), rel=1e-6)


def test_info_nce_in_list_and_in_batch():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # lists of 2, positive first
    in_list = info_nce(q, p, group_size=2)
    expect = -math.log(math.e / (math.e + 1))
    assert in_list.item() == pytest.approx(expect, rel=1e-6)
    in_batch = info_nce(q, p, group_size=2, in_batch=True)
    # query 0: scores [1, 0, 0, 1] (its positive is column 0); query 1: [0, 1, 1, 0] (positive column 2)
    expect_b = -math.log(math.e / (2 * math.e + 2))
    assert in_batch.item() == pytest.approx(expect_b, rel=1e-6)


def test_kl_routing_official_trains_the_retriever_only():
    """kl_routing=official (RocketQAv2's code): the KL's gradient reaches the retriever's scores, not the
    re-ranker's; both: it reaches the two."""
    from types import SimpleNamespace

    from tandem.train import load_config
    from tandem.train.joint import Trainer

    for routing, ce_moves in (("official", False), ("both", True)):
        cfg = load_config(None, {"mode": "joint", "kl_routing": routing})
        s_de = torch.randn(2, 4, requires_grad=True)
        s_ce = torch.randn(2, 4, requires_grad=True)
        terms = Trainer.losses(SimpleNamespace(cfg=cfg, gate_open=True), s_de, s_ce)
        g_de, g_ce = torch.autograd.grad(terms["kl"], [s_de, s_ce], allow_unused=True)
        assert g_de is not None and g_de.abs().sum() > 0
        assert (g_ce is not None and g_ce.abs().sum() > 0) == ce_moves, routing
        assert terms["reranker"].requires_grad  # the re-ranker still learns from its own CE
