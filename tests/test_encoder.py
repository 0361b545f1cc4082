from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.models.encoder import Encoder, pad_batch
from tandem.models.pooling import pool
from tests.conftest import SCIFACT


def test_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2); last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(hidden, mask, "max")


def test_pad_batch():
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_sorted_batching_keeps_input_order(tiny_encoder):
    texts = ["protein", "cell gene cancer virus immune drug brain", "heart", "blood therapy risk patient", "dose"]
    batched = tiny_encoder.encode(texts, batch_size=2, chunk_size=3)
    single = np.stack([tiny_encoder.encode([t], batch_size=1)[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_normalize_and_cls(tiny_model_dir):
    enc = Encoder.from_pretrained(str(tiny_model_dir), pooling="cls", normalize=True)
    v = enc.encode(["protein cell", "gene"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert enc.settings.pooling == "cls"


def test_save_loads_in_sentence_transformers_with_same_vectors(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = ["protein cell gene", "heart blood therapy risk patient study", "mouse"]
    for pooling, normalize in (("mean", True), ("cls", False)):
        enc = Encoder.from_pretrained(str(tiny_model_dir), pooling=pooling, normalize=normalize, max_length=32)
        out = tmp_path / f"{pooling}-{normalize}"
        enc.save(out)
        ours = enc.encode(texts)
        st = SentenceTransformer(str(out), device="cpu")
        theirs = st.encode(texts, convert_to_numpy=True)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        again = Encoder.from_pretrained(str(out))
        assert again.settings == enc.settings
        np.testing.assert_allclose(again.encode(texts), ours, atol=1e-6)


@pytest.mark.slow
def test_default_model_matches_sentence_transformers():
    """The embedded all-MiniLM-L6-v2 gives sentence-transformers' vectors (cosine >= 0.9999)."""
    from sentence_transformers import SentenceTransformer

    from tandem.data import load_corpus
    from tandem.models.hf import default_model_path

    corpus = load_corpus(SCIFACT / "corpus.jsonl")
    texts = corpus[:48] + ["a short query", "what causes cancer?"]
    enc = Encoder.from_pretrained(None)
    assert (enc.settings.pooling, enc.settings.normalize, enc.settings.max_length) == ("mean", True, 256)
    ours = enc.encode(texts, batch_size=16)
    theirs = SentenceTransformer(str(default_model_path()), device="cpu").encode(texts, batch_size=16)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999


def test_inference_device_follows_tandem_device(monkeypatch, tiny_model_dir):
    from tandem.models.reranker import Reranker
    from tandem.utils import inference_device

    monkeypatch.setenv("TANDEM_DEVICE", "cpu")
    assert inference_device() == "cpu"
    assert Encoder.from_pretrained(str(tiny_model_dir)).device.type == "cpu"
    assert Reranker.from_pretrained(str(tiny_model_dir)).device.type == "cpu"


@pytest.mark.gpu
def test_loaded_models_run_on_the_gpu_and_agree_with_the_cpu(monkeypatch, tiny_model_dir, tiny_dataset, tmp_path):
    from tandem.data import load_beir
    from tandem.models.gated import GatedReranker
    from tandem.models.reranker import Reranker

    monkeypatch.delenv("TANDEM_DEVICE", raising=False)
    texts = list(load_beir(tiny_dataset, "test").corpus)[:20]
    gpu = Encoder.from_pretrained(str(tiny_model_dir), max_length=32)
    assert gpu.device.type == "cuda"
    monkeypatch.setenv("TANDEM_DEVICE", "cpu")
    cpu = Encoder.from_pretrained(str(tiny_model_dir), max_length=32)
    np.testing.assert_allclose(gpu.encode(texts), cpu.encode(texts), atol=1e-4)
    pairs = [("protein cell", t) for t in texts]
    monkeypatch.delenv("TANDEM_DEVICE")
    ce = Reranker.from_pretrained(str(tiny_model_dir))
    assert ce.device.type == "cuda"
    assert np.isfinite(ce.predict(pairs)).all()
    GatedReranker.from_body(str(tiny_model_dir), corpus=texts).save(tmp_path / "gated-gpu")
    loaded = Reranker.from_pretrained(tmp_path / "gated-gpu")
    assert loaded.device.type == "cuda" and np.isfinite(loaded.predict(pairs)).all()
