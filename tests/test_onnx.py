"""The ONNX Runtime backend: same vectors as PyTorch (fp32), close ones (int8), cached export, CLI flag."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tandem.models.encoder import Encoder  # noqa: E402
from tests.conftest import tandem  # noqa: E402

TEXTS = ["glucose sleep effect", "insulin mouse brain cell kidney obesity risk study", "a", "heart " * 40]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def test_onnx_fp32_matches_torch_and_int8_stays_close(tiny_model_dir, cache):
    torch_enc = Encoder.from_pretrained(str(tiny_model_dir), max_length=32)
    ref = torch_enc.encode(TEXTS, batch_size=2)
    onnx_enc = Encoder.from_pretrained(str(tiny_model_dir), max_length=32, backend="onnx")
    assert onnx_enc.backend == "onnx"
    np.testing.assert_allclose(onnx_enc.encode(TEXTS, batch_size=2), ref, rtol=1e-4, atol=1e-5)
    int8 = Encoder.from_pretrained(str(tiny_model_dir), max_length=32, backend="onnx-int8").encode(TEXTS, batch_size=3)
    cos = (int8 * ref).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.95 and not np.allclose(int8, ref, atol=1e-6)  # quantised, and close
    files = sorted(p.name for p in cache.rglob("*.onnx"))
    assert files == ["model-eager-int8-pc.onnx", "model-eager-nomask-int8-pc.onnx", "model-eager-nomask.onnx",
                     "model-eager.onnx"]
    plain = next(cache.rglob("model-eager.onnx"))
    mtime = plain.stat().st_mtime_ns
    Encoder.from_pretrained(str(tiny_model_dir), max_length=32, backend="onnx")  # cached: not exported again
    assert plain.stat().st_mtime_ns == mtime
    # traced with eager attention (no SDPA NaN guards over the score matrices), and the PyTorch model keeps SDPA
    import onnx

    ops = {n.op_type for n in onnx.load(str(plain)).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops
    assert torch_enc.backbone.config._attn_implementation == onnx_enc.backbone.config._attn_implementation == "sdpa"
    # batches without padding run the graph traced without the mask: the same vectors
    unmasked, calls = onnx_enc.runtime.unmasked, []
    onnx_enc.runtime.unmasked = SimpleNamespace(run=lambda *a: calls.append(1) or unmasked.run(*a))
    full = ["heart " * 40, "kidney brain " * 30, "glucose " * 50, "x"]  # the first three fill 32 tokens
    np.testing.assert_allclose(onnx_enc.encode(full, batch_size=2), torch_enc.encode(full), rtol=1e-4, atol=1e-5)
    assert len(calls) == 1  # the padded batch (a full passage and "x") ran the masked graph
    # training still runs in PyTorch, with gradients
    onnx_enc.train()
    reps = onnx_enc.embed(TEXTS[:2])
    reps.sum().backward()
    assert next(onnx_enc.backbone.parameters()).grad is not None


def test_cli_index_and_search_with_onnx(tiny_dataset, tiny_model_dir, tmp_path, cache):
    env = {"TANDEM_CACHE": str(tmp_path / "cache")}
    for backend in ("torch", "onnx"):
        tandem("index", "--data", str(tiny_dataset), "--out", str(tmp_path / backend), "--model", str(tiny_model_dir),
               "--max-length", "32", "--backend", backend, "--no-progress", env=env)
        tandem("search", "--index", str(tmp_path / backend), "--data", str(tiny_dataset), "--k", "5", "--backend",
               backend, "--out", str(tmp_path / f"{backend}.trec"), env=env)
    a = np.load(tmp_path / "torch" / "embeddings.npy")
    b = np.load(tmp_path / "onnx" / "embeddings.npy")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    runs = [(tmp_path / f"{x}.trec").read_text().split("\n") for x in ("torch", "onnx")]
    assert [l.split()[:3] for l in runs[0] if l] == [l.split()[:3] for l in runs[1] if l]


def test_cross_encoder_on_onnx_scores_like_torch(tiny_model_dir, tmp_path, cache):
    from tandem.errors import TandemError
    from tandem.models.gated import GatedReranker
    from tandem.models.reranker import Reranker

    Reranker.from_pretrained(str(tiny_model_dir), max_length=48).save(tmp_path / "ce")
    pairs = [("glucose sleep", "sleep effect on glucose in mice"), ("a", "b " * 60), ("heart", "heart kidney")]
    ref = Reranker.from_pretrained(tmp_path / "ce").predict(pairs)
    fast = Reranker.from_pretrained(tmp_path / "ce").set_backend("onnx")
    np.testing.assert_allclose(fast.predict(pairs, batch_size=2), ref, rtol=1e-4, atol=1e-5)
    q8 = Reranker.from_pretrained(tmp_path / "ce").set_backend("onnx-int8").predict(pairs)
    assert np.abs(q8 - ref).max() < 0.1 * (np.abs(ref).max() + 1e-3) + 0.05
    gated = GatedReranker.from_body(str(tiny_model_dir), max_length=48)
    with pytest.raises(TandemError, match="plain cross-encoders"):
        gated.set_backend("onnx")


def test_auto_backend_picks_per_machine(tiny_model_dir, cache, monkeypatch):
    """--backend auto: PyTorch where bf16 is native (or on a GPU), int8 ONNX Runtime on a CPU without it, PyTorch
    for a model ONNX cannot run; the encoder records the backend it resolved to, and the help says which."""
    import importlib.util

    import tandem.utils as utils
    from tandem.models.reranker import Reranker

    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    assert utils.resolve_backend("auto", gpu=False)[0] == "torch"
    assert Encoder.from_pretrained(str(tiny_model_dir), max_length=32, backend="auto").backend == "torch"
    assert utils.resolve_backend("auto", gpu=True)[0] == "torch"
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    assert utils.resolve_backend("auto", gpu=False) == ("onnx-int8", utils.resolve_backend("auto", gpu=False)[1])
    assert utils.resolve_backend("auto", onnx_ok=False, gpu=False)[0] == "torch"
    assert utils.resolve_backend("onnx", gpu=True)[0] == "onnx"  # an explicit choice is kept
    monkeypatch.setattr(utils, "inference_device", lambda: "cpu")
    enc = Encoder.from_pretrained(str(tiny_model_dir), max_length=32, backend="auto")
    assert enc.backend == "onnx-int8" and enc.runtime is not None
    ce = Reranker.from_pretrained(str(tiny_model_dir), max_length=32).set_backend("auto")
    assert ce.backend == "onnx-int8"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    assert utils.resolve_backend("auto", gpu=False)[0] == "torch"
    out = tandem("index", "--help", env={"COLUMNS": "300"}).stdout
    assert "auto: the fastest measured here, which on this machine is" in out
