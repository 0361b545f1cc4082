"""The dual-encoder retriever: query and passage towers (shared by default), dot-product scores.

Scores are ``E_q(q) . E_p(p)``; the temperature ``tau`` divides them inside the list softmax at
training time and is recorded with the model (it does not change the ranking).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from tandem.io import read_json
from tandem.models.encoder import Encoder
from tandem.models.hf import resolve_model

CONFIG_FILE = "tandem_retriever.json"


@dataclass
class RetrieverSettings:
    shared: bool = True
    temperature: float = 0.05
    query_max_length: int = 64
    passage_max_length: int = 256
    query_prefix: str = ""
    passage_prefix: str = ""


class Retriever(nn.Module):
    """Query and passage :class:`Encoder` towers; ``score`` gives (B, G) list scores."""

    def __init__(self, query_encoder: Encoder, passage_encoder: Encoder, settings: RetrieverSettings):
        super().__init__()
        self.query_encoder = query_encoder
        # subtle: a shared tower is registered once, so its parameters are stepped once
        self.passage_encoder = query_encoder if settings.shared else passage_encoder
        self.settings = settings
        self._sync_encoder_settings()

    def _sync_encoder_settings(self) -> None:
        s = self.settings
        if s.shared:
            return
        self.query_encoder.settings.max_length = s.query_max_length
        self.query_encoder.settings.prefix = s.query_prefix
        self.passage_encoder.settings.max_length = s.passage_max_length
        self.passage_encoder.settings.prefix = s.passage_prefix

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike | None = None, **overrides) -> "Retriever":
        """Load a tandem retriever directory, or build one from any encoder id/dir (``None``: default model).

        ``overrides`` set :class:`RetrieverSettings` fields and the encoder's ``pooling``/``normalize``.
        """
        name = resolve_model(name_or_dir)
        path = Path(name)
        enc_over = {k: overrides.pop(k) for k in ("pooling", "normalize") if k in overrides}
        if (path / CONFIG_FILE).exists():
            recorded = read_json(path / CONFIG_FILE)
            settings = RetrieverSettings(**{**recorded, **{k: v for k, v in overrides.items() if v is not None}})
            if recorded.get("shared", True):
                enc = Encoder.from_pretrained(name, **enc_over)
                return cls(enc, enc, settings)
            return cls(Encoder.from_pretrained(path / "query_encoder", **enc_over),
                       Encoder.from_pretrained(path / "passage_encoder", **enc_over), settings)
        settings = RetrieverSettings(**{k: v for k, v in overrides.items() if v is not None})
        q = Encoder.from_pretrained(name, **enc_over)
        return cls(q, q if settings.shared else copy.deepcopy(q), settings)

    def _embed(self, encoder: Encoder, texts: Sequence[str], max_length: int, prefix: str) -> Tensor:
        return encoder(**encoder.collate(encoder.tokenize(texts, max_length, prefix))).reps

    def embed_queries(self, queries: Sequence[str]) -> Tensor:
        s = self.settings
        return self._embed(self.query_encoder, queries, s.query_max_length, s.query_prefix)  # (B, H)

    def embed_passages(self, passages: Sequence[str]) -> Tensor:
        s = self.settings
        return self._embed(self.passage_encoder, passages, s.passage_max_length, s.passage_prefix)  # (N, H)

    @staticmethod
    def list_scores(q: Tensor, p: Tensor) -> Tensor:
        """Dot products of each query with its own list: q (B, H), p (B*G, H) -> (B, G)."""
        b = q.size(0)
        return torch.einsum("bh,bgh->bg", q, p.view(b, p.size(0) // b, -1))

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> Tensor:
        """(B, G) scores; ``passages`` holds B lists of G, flattened, each query's list contiguous."""
        return self.list_scores(self.embed_queries(queries), self.embed_passages(passages))

    def query_tower(self) -> Encoder:
        """The query encoder as a standalone :class:`Encoder` (max length and prefix of queries)."""
        enc = copy.copy(self.query_encoder)
        enc.settings = copy.copy(enc.settings)
        enc.settings.max_length, enc.settings.prefix = self.settings.query_max_length, self.settings.query_prefix
        return enc

    def passage_tower(self) -> Encoder:
        enc = copy.copy(self.passage_encoder)
        enc.settings = copy.copy(enc.settings)
        enc.settings.max_length, enc.settings.prefix = self.settings.passage_max_length, self.settings.passage_prefix
        return enc

    def save(self, path: str | os.PathLike) -> None:
        """Shared towers: one sentence-transformers directory. Separate: ``query_encoder/``, ``passage_encoder/``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        s = self.settings
        prompts = {"query": s.query_prefix, "document": s.passage_prefix}
        if s.shared:
            self.passage_tower().save(path, prompts=prompts)
        else:
            self.query_tower().save(path / "query_encoder")
            self.passage_tower().save(path / "passage_encoder")
        (path / CONFIG_FILE).write_text(json.dumps(asdict(s), indent=2))
