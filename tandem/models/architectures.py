"""The re-ranker architectures tandem builds, and what each one can do: one table instead of "is it gated" checks.

- ``cross``: a standard sequence classifier over ``[CLS] q [SEP] p [SEP]`` (Hugging Face's
  ``AutoModelForSequenceClassification``; sentence-transformers' ``CrossEncoder`` loads its directory with the
  same logits). Runs in ONNX Runtime; PyTorch's fused attention kernel applies when attention dropout is off.
- ``gated``: tandem's cold-start re-ranker (:mod:`tandem.models.gated`): the bi-encoder cosine, a bounded
  lexical term and an interaction head over gated cross-attention. PyTorch only; its learned attention bias
  keeps attention on the unfused path; its directory is not a plain classifier and says so.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from tandem.errors import ConfigError


@dataclass(frozen=True)
class RerankerArchitecture:
    name: str
    loader: str  # "module:Class" whose ``load(path, **overrides)`` opens a saved directory; "" = the plain loader
    onnx: bool  # runs in ONNX Runtime
    fused_attention: bool  # PyTorch's fused SDPA kernel stores no attention matrices when attention dropout is 0
    plain_classifier: bool  # CrossEncoder / AutoModelForSequenceClassification load it as it is

    def load(self, path, **overrides):
        module, cls = self.loader.split(":")
        return getattr(importlib.import_module(module), cls).load(path, **overrides)


ARCHITECTURES: dict[str, RerankerArchitecture] = {
    "cross": RerankerArchitecture("cross", "", onnx=True, fused_attention=True, plain_classifier=True),
    "gated": RerankerArchitecture("gated", "tandem.models.gated:GatedReranker", onnx=False, fused_attention=False,
                                  plain_classifier=False),
}


def architecture(name: str) -> RerankerArchitecture:
    """The architecture called ``name``; an unknown one is a :class:`ConfigError` that lists the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"reranker_arch must be one of {sorted(ARCHITECTURES)}, got {name!r}") from None
