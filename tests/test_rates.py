"""The time plan's rates measured on the machine: the probe inverts the plan, is cached, and sizes the budget."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tandem.data import load_beir
from tandem.recipe import load_recipe, plan, run_recipe


def _cfg(model_dir, data, **kw):
    base = dict(data=str(data), model=str(model_dir), max_length=32, query_max_length=16, reranker_max_length=48,
                top_n=10, list_size=4, batch_size=6, warmup_steps=2, joint_steps=2, eval_every=0,
                heldout_fraction=0.0, rerank_k=5, denoise=False, hybrid=False, lexical_fit_queries=0,
                reranker_arch="gated")
    return load_recipe(None, {**base, **kw})


def test_probe_gives_back_the_measured_step_times(tiny_dataset, tiny_model_dir, tmp_path, monkeypatch):
    """With every probed call taking a known time, the plan built on the probe's rates gives each stage back the
    time its steps took in the probe: S steps of B lists cost S * B / (lists probed) * (time of one probed step),
    an index n / 32 probed encodings, re-ranking n pairs / 32 probed pairs (plus each stage's fixed overhead)."""
    import tandem.train.rates as rates

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rates, "_best_of", lambda fn, repeats=2: 2.0)
    cfg = _cfg(tiny_model_dir, tiny_dataset, warmup_steps=5, joint_steps=0, retriever_warmup_steps=7,
               retriever_warmup_train={"list_size": 2, "batch_size": 16, "in_batch_negatives": True, "chunk_size": 8},
               warmup_train={"reranker_micro_lists": 1})
    ds = load_beir(tiny_dataset, "train")
    measured = rates.measure_rates(cfg, ds.corpus, ds.queries)
    assert set(measured) == set(rates.RATE_KEYS)
    est = plan(replace(cfg, rates=measured), n_passages=640, n_train=100, n_test=50)
    assert est["retriever-warmup"] == pytest.approx(7 * 16 / 8 * 2.0 + 20, rel=1e-3)
    assert est["warmup"] == pytest.approx(5 * 6 / 3 * 2.0 + 30, rel=1e-3)
    assert est["zs-index"] == pytest.approx(640 / 32 * 2.0 + 10, rel=1e-3)
    assert est["rerank"] == pytest.approx(50 * 5 / 32 * 2.0 + 5, rel=1e-3)


def test_the_shipped_demo_settings_probe_without_failing(tiny_dataset, tiny_model_dir, tmp_path, monkeypatch):
    """The probe trains one step of each warm-up with the demo's own training settings (positive_pool: retrieved
    among them): a setting the probe's lists cannot satisfy would make every demo plan on the fixed rates."""
    import tandem.train.rates as rates
    from tandem.recipe import shipped_config

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    demo = load_recipe(shipped_config("demo"))
    assert (demo.train or {}).get("positive_pool") == "retrieved"
    cfg = replace(_cfg(tiny_model_dir, tiny_dataset), train=demo.train,
                  retriever_warmup_train=demo.retriever_warmup_train, warmup_train=demo.warmup_train)
    ds = load_beir(tiny_dataset, "train")
    measured = rates.measure_rates(cfg, ds.corpus, ds.queries)
    assert set(measured) == set(rates.RATE_KEYS) and all(v > 0 for v in measured.values())


def test_probe_is_cached_per_machine_and_shape(tiny_dataset, tiny_model_dir, tmp_path, monkeypatch):
    import tandem.train.rates as rates

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tiny_model_dir, tiny_dataset)
    ds = load_beir(tiny_dataset, "train")
    first = rates.machine_rates(cfg, ds.corpus, ds.queries)
    assert not first["cached"] and all(v > 0 for v in first["rates"].values())
    again = rates.machine_rates(cfg, ds.corpus, ds.queries)
    assert again["cached"] and again["rates"] == first["rates"]
    assert rates.cached_rates(replace(cfg, max_length=24)) is None  # another shape
    monkeypatch.setattr(rates, "machine", lambda: "cpu:another one")
    assert rates.cached_rates(cfg) is None  # another machine
    (tmp_path / "cache" / "rates.json").write_text("{not json")
    assert rates.cached_rates(cfg) is None  # a damaged cache is measured again, not an error


def test_budget_is_sized_on_measured_rates_unless_told_otherwise(tiny_dataset, tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    import tandem.train.rates as rates

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tiny_model_dir, tiny_dataset, budget_minutes=4, min_steps=1, warmup_epochs=5.0, joint_epochs=5.0)
    dry = run_recipe(cfg, tmp_path / "run", dry_run=True)
    assert dry["rates_source"] == "measured" and "this machine's rates" in dry["rates_note"]
    assert dry["rates"] == rates.cached_rates(cfg)["rates"]
    fixed = run_recipe(replace(cfg, measure_rates=False), tmp_path / "run", dry_run=True)
    assert fixed["rates_source"] == "fixed" and "rerank_train_pairs_per_s" not in fixed["rates"]
    given = {"encode_per_s": 1.0, "train_seq_per_s": 1.0, "rerank_pairs_per_s": 1.0}
    slow = run_recipe(replace(cfg, rates=given), tmp_path / "run", dry_run=True)
    assert slow["rates_source"] == "given" and slow["sizing"]["factor"] < dry["sizing"]["factor"] == 1.0


def test_a_failed_probe_plans_on_the_fixed_rates(tiny_dataset, tiny_model_dir, tmp_path, monkeypatch, caplog):
    import tandem.train.rates as rates

    def broken(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rates, "measure_rates", broken)
    dry = run_recipe(_cfg(tiny_model_dir, tiny_dataset, budget_minutes=4), tmp_path / "run", dry_run=True)
    assert dry["rates_source"] == "fixed" and "probe failed: RuntimeError" in dry["rates_note"]
    assert "the probe failed" in caplog.text


def test_a_plan_far_off_the_stages_drops_the_cached_rates(tiny_dataset, tiny_model_dir, tmp_path, monkeypatch):
    """A probe measured while the CPU was busy caches rates several times too slow; the run that then takes a
    fraction of its plan drops them, so the next run measures again. Within the limit they stay cached."""
    import tandem.train.rates as rates

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tiny_model_dir, tiny_dataset)
    entry = {"rates": {k: 100.0 for k in rates.RATE_KEYS}, "key": rates.probe_key(cfg), "measured_at": "now",
             "seconds": 1.0}
    rates._store(entry)
    planned = {"warmup": 100.0, "joint": 50.0, "bm25": 2.0}
    assert rates.plan_drift({"bm25": 30.0}, planned) is None  # only short stages ran: nothing to judge by
    near = rates.check_plan(cfg, {"warmup": 110.0, "joint": 55.0, "bm25": 30.0}, planned)
    assert near == {"ratio": 1.1, "stages": 2, "reprobe": False} and rates.cached_rates(cfg) is not None
    fast = rates.check_plan(cfg, {"warmup": 30.0, "joint": 15.0}, planned)
    assert fast["ratio"] == pytest.approx(0.3) and fast["reprobe"] and rates.cached_rates(cfg) is None
    rates._store(entry)
    assert rates.check_plan(cfg, {"warmup": 200.0, "joint": 100.0}, planned)["reprobe"]  # slower: measured again
    assert not rates.check_plan(cfg, {"warmup": 200.0, "joint": 100.0}, planned)["reprobe"]  # nothing left to drop


def test_a_run_on_rates_probed_under_load_measures_again_next_time(tiny_dataset, tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    import tandem.train.rates as rates

    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    real = rates.measure_rates
    monkeypatch.setattr(rates, "measure_rates",  # the probe as a busy CPU would measure it: 20x too slow
                        lambda cfg, corpus, queries: {k: v / 20 for k, v in real(cfg, corpus, queries).items()})
    cfg = _cfg(tiny_model_dir, tiny_dataset, budget_minutes=30, min_steps=1)
    report = run_recipe(cfg, tmp_path / "run")
    assert report["sizing"]["rates_source"] == "measured"
    drift = report["sizing"]["plan_drift"]
    assert drift["ratio"] < 1 / rates.DRIFT_LIMIT and drift["reprobe"] and rates.cached_rates(cfg) is None
    assert "the next run measures them again" in (tmp_path / "run" / "report.md").read_text()
