"""Data-parallel training: 2 CPU processes (gloo) follow the same loss curve as 1 with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tandem.data import load_beir
from tandem.index.bm25 import bm25_search
from tandem.train import lists_from_run, write_lists
from tests.conftest import make_tiny_bert

SETTINGS = ["allow_untrained_reranker=true", "batch_size=4", "list_size=3", "query_max_length=16",
            "passage_max_length=32", "reranker_max_length=48", "warmup_ratio=0", "seed=3", "lr_retriever=1e-3",
            "lr_reranker=1e-3", "heldout_fraction=0", "log_every=1"]


def _train(procs: int, data, lists, model, out, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["train", "--data", str(data), "--lists", str(lists), "--out", str(out), "--mode", "joint",
           "--retriever", str(model), "--reranker", str(model), "--no-progress", *SETTINGS, *extra]
    launch = [sys.executable, "-m", "tandem"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "tandem"]
    env = {**os.environ, "TANDEM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch + cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import generate_dataset, write_beir

    root = tmp_path_factory.mktemp("ddp")
    data = write_beir(root / "data", *generate_dataset(n_passages=40, n_queries=22))  # 11 lists: a short last batch
    ds = load_beir(data, "train")
    write_lists(root / "lists.jsonl", lists_from_run(bm25_search(ds.corpus, ds.split_queries(), k=10), ds.qrels,
                                                     ds.corpus, top_n=8))
    model = make_tiny_bert(root / "bert", dropout=0.0)  # dropout would differ between 1 and 2 processes
    return root, data, root / "lists.jsonl", model


def test_two_processes_follow_the_single_process_loss_curve(setup):
    root, data, lists, model = setup
    _train(1, data, lists, model, root / "one", "max_steps=4")
    _train(2, data, lists, model, root / "two", "max_steps=4")  # steps 3-4 cross the epoch end (11 lists / 4)
    one, two = _losses(root / "one"), _losses(root / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for term in ("loss", "kl", "reranker"):
            assert b[term] == pytest.approx(a[term], rel=1e-4, abs=1e-6), (a, b)
    w1 = load_file(root / "one" / "retriever" / "model.safetensors")
    w2 = load_file(root / "two" / "retriever" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)
    head = [json.loads(l) for l in (root / "two" / "metrics.jsonl").read_text().splitlines()][0]
    assert head["world_size"] == 2


def test_checkpoint_from_two_processes_resumes_on_one(setup):
    root, data, lists, model = setup
    _train(2, data, lists, model, root / "full", "max_steps=4", "save_every=2")
    # a run killed after its step-2 checkpoint, continued by a single process
    _train(2, data, lists, model, root / "cut", "max_steps=4", "save_every=2")
    ckpts = root / "cut" / "checkpoints"
    (ckpts / "latest").write_text("step-0000002\n")
    import shutil

    shutil.rmtree(ckpts / "step-0000004")
    _train(1, data, lists, model, root / "cut", "max_steps=4", "save_every=2", "--resume")
    full, cut = _losses(root / "full"), _losses(root / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for a, b in zip(full, cut):  # steps 3-4 ran on one process from the 2-process checkpoint
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (a, b)
    for name in ("retriever/model.safetensors", "reranker/model.safetensors"):
        a, b = load_file(root / "full" / name), load_file(root / "cut" / name)
        for k in a:
            # Adam moves near-zero-gradient scalars by ~lr either way, so summation order shows at lr scale
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-3)
