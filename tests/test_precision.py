"""bf16 inference (a bf16 copy of the weights) and training (autocast, fp32 weights): resolution of the setting,
closeness to fp32, the copy's lifecycle, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.models.gated import GatedReranker
from tandem.models.reranker import Reranker
from tandem.utils import autocast, resolve_precision
from tests.conftest import tandem
from tests.test_train import _cfg, _models, setup  # noqa: F401  (fixture)

TEXTS = ["protein cell gene", "cancer virus immune drug brain heart blood therapy risk",
         "patient study trial dose mouse human tumor signal receptor pathway mutation vaccine infection", "sleep"]


def test_resolution(monkeypatch):
    monkeypatch.delenv("TANDEM_PRECISION", raising=False)
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr("tandem.utils.cpu_has_native_bf16", lambda: False)
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr("tandem.utils.cpu_has_native_bf16", lambda: True)
    assert resolve_precision(None, "cpu") == "bf16"
    monkeypatch.setenv("TANDEM_PRECISION", "fp32")  # the global setting decides what "auto" means
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
    with autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_encoder_bf16_close_to_fp32(tiny_encoder):
    tiny_encoder.precision = "fp32"
    v32 = tiny_encoder.encode(TEXTS)
    tiny_encoder.precision = "bf16"
    v16 = tiny_encoder.encode(TEXTS)
    assert v16.dtype == np.float32 and not np.array_equal(v16, v32)  # it did run in bf16
    assert _cosines(v16, v32).min() > 0.999
    gen = tiny_encoder.iter_encode(TEXTS, chunk_size=2)
    next(gen)
    assert not torch.is_autocast_enabled("cpu")  # the caller's code between chunks runs without autocast
    gen.close()


def test_bf16_inference_copy_follows_the_weights_and_is_not_saved(tiny_encoder, tmp_path):
    """Inference in bf16 runs a bf16 copy of the body, made once and remade after any change to the fp32
    weights (an optimiser step, load_state_dict); the model's own weights stay fp32 and the copy is never saved."""
    tiny_encoder.precision = "bf16"
    v1 = tiny_encoder.encode(TEXTS)
    copy1 = tiny_encoder.__dict__["_bf16_body"][1]
    assert next(copy1.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in tiny_encoder.parameters())
    assert not any("_bf16" in k for k in tiny_encoder.state_dict())
    np.testing.assert_array_equal(tiny_encoder.encode(TEXTS), v1)
    assert tiny_encoder.__dict__["_bf16_body"][1] is copy1  # unchanged weights: the same copy

    opt = torch.optim.SGD(tiny_encoder.parameters(), lr=0.5)
    tiny_encoder.embed(TEXTS).pow(2).sum().backward()
    opt.step()
    v2 = tiny_encoder.encode(TEXTS)
    assert tiny_encoder.__dict__["_bf16_body"][1] is not copy1 and not np.allclose(v2, v1, atol=1e-3)
    tiny_encoder.precision = "fp32"
    assert _cosines(v2, tiny_encoder.encode(TEXTS)).min() > 0.999  # the copy is of the new weights

    from tandem.utils import set_bf16_inference_copy

    set_bf16_inference_copy(False)  # as the recipe runs: autocast over the fp32 weights, no copy made
    try:
        tiny_encoder.__dict__.pop("_bf16_body")
        tiny_encoder.precision = "bf16"
        v3 = tiny_encoder.encode(TEXTS)
        assert "_bf16_body" not in tiny_encoder.__dict__
        assert _cosines(v3, v2).min() > 0.999
    finally:
        set_bf16_inference_copy(True)
    tiny_encoder.save(tmp_path / "enc")
    from safetensors.torch import load_file

    assert all(t.dtype != torch.bfloat16 for t in load_file(tmp_path / "enc" / "model.safetensors").values())


@pytest.mark.parametrize("arch", ["cross", "gated"])
def test_reranker_bf16_close_to_fp32(tiny_model_dir, arch):
    torch.manual_seed(0)
    ce = (GatedReranker.from_body(str(tiny_model_dir), corpus=TEXTS, max_length=48) if arch == "gated"
          else Reranker.from_pretrained(str(tiny_model_dir), max_length=48))
    pairs = [(TEXTS[0], t) for t in TEXTS] + [(TEXTS[1], t) for t in TEXTS]
    ce.precision = "fp32"
    s32 = ce.predict(pairs)
    ce.precision = "bf16"
    s16 = ce.predict(pairs)
    assert np.isfinite(s16).all() and not np.array_equal(s16, s32)
    assert np.abs(s16 - s32).max() <= 0.05 * max(1.0, np.abs(s32).max())


def test_training_in_bf16_on_cpu(setup, tmp_path):  # noqa: F811
    from tandem.train import Trainer

    ds, lists, model_dir = setup
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = _cfg(mode="joint", max_steps=2, precision=precision, seed=3)
        r, ce = _models(model_dir, cfg)
        trainer = Trainer(cfg, ds.corpus, ds.queries, lists, tmp_path / precision, r, ce, progress=False)
        assert r.query_encoder.precision == precision and ce.precision == precision
        with trainer._autocast():
            assert torch.is_autocast_enabled("cpu") == (precision == "bf16")
        result = trainer.train()
        assert result.steps == 2 and all(np.isfinite(v) for v in result.final_losses.values())
        losses[precision] = result.final_losses["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.1)
    with pytest.raises(Exception, match="precision must be auto, fp32 or bf16"):
        _cfg(precision="fp16")


def test_cli_precision_option_reaches_the_index(tiny_dataset, tiny_model_dir, tmp_path):
    from tandem.io import read_json

    for precision in ("bf16", "fp32"):
        out = tmp_path / precision
        tandem("--precision", precision, "index", "--data", tiny_dataset, "--model", tiny_model_dir, "--out", out,
               env={"TANDEM_PRECISION": ""})
        info = read_json(out / "manifest.json")
        assert (info.get("info") or info)["precision"] == precision, info
