"""The cross-encoder re-ranker: ``[CLS] q [SEP] p [SEP]`` -> one logit.

Built on ``AutoModelForSequenceClassification`` with one label, so a saved directory loads in
sentence-transformers' ``CrossEncoder(dir)`` and in transformers, giving the same logits.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tandem.errors import IncompatibleArtifactError, ModelLoadError
from tandem.io import read_json
from tandem.models.encoder import pad_batch
from tandem.models.hf import _load_errors, load_tokenizer, quiet_transformers, resolve_model
from tandem.utils import inference_autocast, inference_body, progress_bar

log = logging.getLogger(__name__)

CONFIG_FILE = "tandem_reranker.json"


@dataclass
class RerankerSettings:
    max_length: int = 256
    query_max_length: int = 64
    trained: bool = False  # False while the classification head is freshly initialised
    architecture: str = "cross"  # a name in tandem.models.architectures.ARCHITECTURES


class Reranker(nn.Module):
    """Cross encoder with one output logit per (query, passage) pair."""

    def __init__(self, model: nn.Module, tokenizer, settings: RerankerSettings, name: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.name = name
        self.runtime = None  # ONNX Runtime for inference (set_backend)
        self.backend = "torch"
        self.precision: str | None = None  # inference precision (auto, fp32, bf16); None: $TANDEM_PRECISION or auto

    def set_backend(self, backend: str) -> "Reranker":
        """Score pairs in PyTorch or ONNX Runtime (``onnx``, ``onnx-int8``; ``auto``: see
        :func:`tandem.utils.resolve_backend`); training stays in PyTorch."""
        from tandem.models.architectures import architecture
        from tandem.utils import resolve_backend

        onnx_ok = architecture(self.settings.architecture).onnx
        backend = resolve_backend(backend, onnx_ok=onnx_ok)[0]
        if backend != "torch" and not onnx_ok:
            raise IncompatibleArtifactError("the ONNX backend runs plain cross-encoders; this re-ranker is "
                                            f"{self.settings.architecture!r}")
        from tandem.models.onnx_backend import runtime
        from tandem.utils import inference_device

        self.to(inference_device() if backend == "torch" else "cpu")  # ONNX Runtime runs on the CPU here
        self.runtime, self.backend = runtime(self.model, self.name, backend, classifier=True), backend
        return self

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike | None = None, **overrides) -> "Reranker":
        """Load a cross encoder, or put a new one-logit head on any encoder body (``None``: default model).

        ``settings.trained`` records whether the head was loaded from the checkpoint (True) or is new.
        """
        from transformers import AutoModelForSequenceClassification

        name = resolve_model(name_or_dir)
        path = Path(name)
        recorded = read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).exists() else {}
        from tandem.models.architectures import architecture

        spec = architecture(recorded.get("architecture", "cross"))
        if spec.loader:  # a tandem architecture with a directory layout of its own
            return spec.load(path, **overrides)
        try:
            with quiet_transformers():
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    name, num_labels=1, output_loading_info=True, ignore_mismatched_sizes=True)
        except _load_errors() as e:
            raise ModelLoadError(f"could not load re-ranker {name!r}: {e}") from None
        head_missing = any(k.startswith(("classifier", "score", "pre_classifier")) for k in info["missing_keys"]) \
            or bool(info.get("mismatched_keys"))
        values = {**recorded, **{k: v for k, v in overrides.items() if v is not None}}
        values["trained"] = not head_missing and values.get("trained", True)
        settings = RerankerSettings(**{k: v for k, v in values.items() if k in RerankerSettings.__dataclass_fields__})
        return cls(model, load_tokenizer(name), settings, name=name).set_backend("torch")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, Tensor]:
        """Pair encodings: the query is cut to ``query_max_length`` first, then the passage fills the rest."""
        s = self.settings
        q_ids = self.tokenizer(list(queries), add_special_tokens=False, truncation=True,
                               max_length=s.query_max_length)["input_ids"]
        p_ids = self.tokenizer(list(passages), add_special_tokens=False, truncation=True,
                               max_length=s.max_length)["input_ids"]
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        ids, types = [], []
        for q, p in zip(q_ids, p_ids):
            p = p[: max(0, s.max_length - len(q) - 3)]
            ids.append([cls_id, *q, sep_id, *p, sep_id])
            types.append([0] * (len(q) + 2) + [1] * (len(p) + 1))
        return pad_batch(ids, self.tokenizer.pad_token_id or 0, self.device, token_types=types)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                body: nn.Module | None = None) -> Tensor:
        """``body``: the network to run instead of ``model`` (the bf16 copy :func:`inference_body` gives)."""
        if self.runtime is not None and not torch.is_grad_enabled():
            out = self.runtime(input_ids, attention_mask, token_type_ids)
        else:
            out = (body or self.model)(input_ids=input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids)
        return out.logits.squeeze(-1)  # (N,)

    def score(self, queries: Sequence[str], passages: Sequence[str], **kwargs) -> Tensor:
        """Logits (N,) for N pairs, with gradients."""
        return self(**self.tokenize(queries, passages), **kwargs)

    def _inference(self):
        """``(kwargs for score, context)`` of one inference batch: a plain classifier runs a bf16 copy of its
        weights where the precision is bf16 (:func:`inference_body`); other architectures, whose forward mixes
        its own fp32 terms, run under bf16 autocast."""
        from tandem.models.architectures import architecture

        if architecture(self.settings.architecture).plain_classifier:
            body, context = inference_body(self, self.model)
            return {"body": body}, context
        return {}, inference_autocast(self)

    @torch.inference_mode()
    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Logits for many pairs, batched by length, in input order."""
        was_training = self.training
        self.eval()
        out = np.empty(len(pairs), dtype=np.float32)
        order = np.argsort([-(len(q) + len(p)) for q, p in pairs], kind="stable")
        try:
            with progress_bar(len(pairs), "re-ranking", progress, unit="pair") as bar:
                for b in range(0, len(order), batch_size):
                    sel = order[b : b + batch_size]
                    kwargs, context = self._inference()
                    with context:
                        logits = self.score([pairs[i][0] for i in sel], [pairs[i][1] for i in sel], **kwargs)
                    out[sel] = logits.float().cpu().numpy()
                    bar.update(len(sel))
        finally:
            self.train(was_training)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """A plain sequence-classification directory (CrossEncoder-loadable) plus ``tandem_reranker.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.settings), indent=2))
