"""Damaged inputs, every command that reads them: exit 0 or 2, never a traceback or a bare "Aborted", and an
output path that holds its previous complete content or a complete new one.

Seeded and bounded: each input kind (corpus, gzipped corpus, queries, qrels, run, training lists, recipe
config, training config) gets each damage (truncated, bit flips, re-encoded as UTF-16 and as Latin-1, emptied,
a byte-order mark, gzip cut short) and is fed to the commands that read it, in process.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil

import pytest

from tests.conftest import generate_dataset, run_cli, write_beir

DAMAGES = ("truncated", "bitflip", "utf16", "latin1", "empty", "bom", "gzip-cut")


def damage(data: bytes, kind: str, rng: random.Random) -> bytes:
    if kind == "truncated":
        return data[: rng.randrange(1, max(2, len(data) - 1))]
    if kind == "bitflip":
        out = bytearray(data)
        for _ in range(4):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "utf16":
        return data.decode("utf-8").encode("utf-16")
    if kind == "latin1":  # a non-ASCII character written in Latin-1: not UTF-8
        text = data.decode("utf-8")
        cut = rng.randrange(len(text))
        return (text[:cut] + "é" + text[cut:]).encode("latin-1", errors="replace")
    if kind == "empty":
        return b""
    if kind == "bom":  # harmless: it must be read
        return b"\xef\xbb\xbf" + data
    if kind == "gzip-cut":  # gzip data cut in the middle, under the file's own name
        packed = gzip.compress(data)
        return packed[: len(packed) // 2]
    raise ValueError(kind)


@pytest.fixture
def world(tmp_path, tiny_model_dir, capsys):
    """A valid dataset, run, training lists and configs, and the commands reading each."""
    corpus, queries, qrels = generate_dataset(n_passages=30, n_queries=12)
    data = write_beir(tmp_path / "data", corpus, queries, qrels)
    run = tmp_path / "run.trec"
    run.write_text("".join(f"{q}\tQ0\t{p}\t{r}\t{10 - r}\ttandem\n" for q in qrels["test"]
                           for r, p in enumerate(sorted(corpus)[:5], start=1)))
    lists = tmp_path / "lists.jsonl"
    lists.write_text("".join(json.dumps({"qid": q, "positives": [{"pid": p} for p in d],
                                         "negatives": [{"pid": n, "source": "undenoised"}
                                                       for n in sorted(corpus)[:4] if n not in d]}) + "\n"
                             for q, d in qrels["train"].items()))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: scifact\nplan_passages: 1000\nplan_train_queries: 100\nplan_eval_queries: 50\n"
                      "joint_steps: 3\n")
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text("max_steps: 1\nbatch_size: 2\nlist_size: 2\nmode: retriever\n")
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"systems": {"st-mnrl": {"nDCG@10": 0.6, "RR@10": 0.5, "train_seconds": 12.0}}}))
    qrels_file = data / "qrels" / "test.tsv"
    out = tmp_path / "out.trec"
    # an index, and a training run with checkpoints, to damage their files
    index = tmp_path / "idx"
    code, text = run_cli(["index", "--data", data, "--out", index, "--model", tiny_model_dir, "--max-length", 32],
                         capsys)
    assert code == 0, text
    ckpt_run = ["train", "--data", data, "--lists", lists, "--mode", "retriever", "--retriever", tiny_model_dir,
                "--out", tmp_path / "ck", "max_steps=2", "save_every=1", "batch_size=2", "list_size=2",
                "passage_max_length=32", "query_max_length=16"]
    code, text = run_cli(ckpt_run, capsys)
    assert code == 0, text
    step = tmp_path / "ck" / "checkpoints" / (tmp_path / "ck" / "checkpoints" / "latest").read_text().strip()
    shutil.copytree(tmp_path / "ck", tmp_path / "ck.orig")  # restored after each case
    resume = [*ckpt_run[:-6], "max_steps=3", *ckpt_run[-5:], "--resume"]
    search = ["search", "--index", index, "--data", data, "--k", 5, "--out", out]
    mine = ["mine", "--data", data, "--out", out, "--bm25", "--no-dense", "--top-n", 5]
    # a model directory and a gated re-ranker's
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    from tandem.models.gated import GatedReranker

    GatedReranker.from_body(str(tiny_model_dir), corpus=["protein cell", "gene"],
                            max_length=48).save(tmp_path / "gated")
    encode = ["index", "--data", data, "--out", tmp_path / "idx2", "--model", model, "--max-length", 32]
    rerank = ["rerank", "--run", run, "--data", data, "--reranker", tmp_path / "gated", "--k", 3, "--out", out]
    kinds = {
        "corpus": (data / "corpus.jsonl", [["data", "check", data], ["bm25", "--data", data, "--out", out], mine]),
        "queries": (data / "queries.jsonl", [["data", "check", data], ["bm25", "--data", data, "--out", out], mine]),
        "qrels": (qrels_file, [["data", "check", data], ["evaluate", run, "--qrels", qrels_file, "--json"]]),
        "train-qrels": (data / "qrels" / "train.tsv", [mine]),
        "run": (run, [["evaluate", run, "--qrels", qrels_file], ["fuse", run, run, "--out", out]]),
        "lists": (lists, [["train", "--data", data, "--lists", lists, "--mode", "retriever", "--retriever",
                           tiny_model_dir, "--out", tmp_path / "t", "max_steps=1", "batch_size=2", "list_size=2",
                           "passage_max_length=32", "query_max_length=16"]]),
        "recipe-config": (recipe, [["recipe", recipe, "--dry-run"]]),
        "peer-results": (peers, [["recipe", recipe, "--dry-run", f"peers={peers}"]]),
        "train-config": (train_cfg, [["train", "--data", data, "--lists", lists, "--config", train_cfg,
                                      "--retriever", tiny_model_dir, "--out", tmp_path / "t2"]]),
        "index-manifest": (index / "manifest.json", [search]),
        "index-ids": (index / "ids.txt", [search]),
        "index-faiss": (index / "index.faiss", [search]),
        "checkpoint-state": (step / "state.pt", [resume]),
        "checkpoint-json": (step / "state.json", [resume]),
        "model-config": (model / "config.json", [encode]),
        "model-weights": (model / "model.safetensors", [encode]),
        "reranker-config": (tmp_path / "gated" / "tandem_reranker.json", [rerank]),
        "reranker-head": (tmp_path / "gated" / "gated_head.pt", [rerank]),
    }
    return tmp_path, kinds, out


def test_damaged_inputs_fail_cleanly(world, capsys, monkeypatch):
    """Each input kind x damage, through the commands that read it; the counts go to BENCHMARKS.md."""
    tmp_path, kinds, out = world
    monkeypatch.setenv("TANDEM_NO_PROGRESS", "1")
    rng = random.Random(1234)
    counts = {"cases": 0, "clean_errors": 0, "harmless": 0}
    failures, seen = [], []
    for kind, (path, commands) in kinds.items():
        original = path.read_bytes()
        for dmg in DAMAGES:
            if dmg == "gzip-cut" and kind not in ("corpus", "queries"):
                continue
            binary = kind in ("index-faiss", "checkpoint-state", "model-weights", "reranker-head")
            if binary and dmg in ("utf16", "latin1", "bom"):  # text damages: not for binary files
                continue
            target = path.with_name(path.name + ".gz") if dmg == "gzip-cut" else path
            if dmg == "gzip-cut":
                path.unlink()
            target.write_bytes(damage(original, dmg, rng))
            for args in commands:
                out.write_text("previous complete content\n")
                code, text = run_cli(args, capsys)
                counts["cases"] += 1
                bad = []
                if code not in (0, 2):
                    bad.append(f"exit {code}")
                if "Traceback" in text or "Aborted" in text:
                    bad.append("traceback or Aborted")
                if code == 2:
                    counts["clean_errors"] += 1
                    if "error: " not in text:
                        bad.append("no error line")
                    if out.read_text() != "previous complete content\n":
                        bad.append("output overwritten by a failed run")
                else:
                    counts["harmless"] += 1
                if dmg == "bom" and code != 0 and not kind.startswith(("index", "checkpoint", "model", "reranker")):
                    bad.append("a byte-order mark was not read")
                # damage that leaves no valid file behind must be caught (a cut at a line end, or bit flips in a
                # text file, can leave valid data; a flipped bit in a binary file breaks its checksum)
                # (a model's weights carry no checksum: a flipped bit there can load as other weights)
                must_fail = dmg in ("utf16", "latin1", "empty", "gzip-cut") or (
                    binary and dmg == "bitflip" and not kind.startswith(("model", "reranker")))
                if must_fail and code != 2:
                    bad.append("damage not detected")
                seen.append(f"{kind} / {dmg} / {args[0]}: exit {code}: "
                            + (text.strip().splitlines()[-1][:160] if text.strip() else ""))
                if bad:
                    failures.append(f"{kind} / {dmg} / {' '.join(map(str, args[:2]))}: {bad}: {text[-300:]}")
            target.unlink()
            path.write_bytes(original)
            for d in ("t", "t2", "idx2"):
                shutil.rmtree(tmp_path / d, ignore_errors=True)
            shutil.rmtree(tmp_path / "ck")  # a resumed run moves the latest checkpoint on: start each case anew
            shutil.copytree(tmp_path / "ck.orig", tmp_path / "ck")
    if os.environ.get("TANDEM_FUZZ_REPORT"):  # the table in BENCHMARKS.md: TANDEM_FUZZ_REPORT=1 pytest -s ...
        with capsys.disabled():
            print("\n".join(seen), counts, sep="\n")
    assert not failures, "\n".join(failures) + "\n\nall cases:\n" + "\n".join(seen)
    assert counts["cases"] >= 120 and counts["clean_errors"] >= 100, counts
