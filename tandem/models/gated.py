"""A cross-encoder that starts out equal to the bi-encoder, for the re-ranker cold start.

Input: ``[CLS] q [SEP] [CLS] p [SEP]``, each segment with positions from 0 and token type 0, as
the bi-encoder sees it alone. Attention between the two segments passes through a learned gate:
an additive bias ``g_h`` (one per head, shared by the layers) on the attention logits between
tokens of different segments. At ``g_h = -inf`` the segments cannot see each other and the token
states equal the bi-encoder's exactly; the gate starts at ``gate_init`` (e.g. -8), nearly closed
but with gradient, and opens as training finds interactions worth having.

score = scale * cos(mean(q tokens), mean(p tokens))     # the bi-encoder, scale = 1 / tau
      + max(w_lex, 0) * lexical(q, p)                     # BM25 over word pieces (idf from the corpus),
                                                          # divided by the query's highest possible BM25
      + head(h_CLS)                                       # interaction head, zero at start

The lexical term is bounded: its feature lies in [0, 1] whatever the corpus (BM25 divided by the
sum of ``idf * (k1 + 1)`` over the query's distinct word pieces, its limit for a passage that
repeats every query term) and its weight cannot go below zero, so a lexical match can only add to
a passage's score. Unbounded, one scalar learned on NFCorpus's lists went negative (-0.197 on raw
BM25) and turned the re-ranker against lexical matches: a zero-shot top-20 re-ranked from 0.315
to 0.127 nDCG@10. Models saved before this (``lexical`` absent from their config) keep the raw
feature and the signed weight they were trained with.

``scale`` starts at 1/tau of the retriever, ``w_lex`` and the head at 0, so the initial ranking
is the bi-encoder's own; listwise training then moves each part at its own learning rate.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tandem.errors import ModelLoadError
from tandem.io import read_json
from tandem.models.encoder import pad_batch
from tandem.models.hf import _load_errors, load_backbone, load_tokenizer, resolve_model
from tandem.models.pooling import pool
from tandem.models.reranker import CONFIG_FILE, Reranker, RerankerSettings

HEAD_FILE = "gated_head.pt"
BODY_DIR = "body"  # the transformer body's own directory inside a saved gated re-ranker
IDF_FILE = "idf.npy"


def wordpiece_idf(tokenizer, texts: Iterable[str], batch: int = 2048) -> tuple[np.ndarray, float]:
    """BM25 idf per vocabulary id over ``texts`` and their mean length in word pieces."""
    df = np.zeros(len(tokenizer), dtype=np.float64)
    n, total = 0, 0
    buf: list[str] = []

    def flush():
        nonlocal n, total
        for ids in tokenizer(buf, add_special_tokens=False, return_attention_mask=False)["input_ids"]:
            df[np.unique(ids)] += 1
            total += len(ids)
            n += 1
        buf.clear()

    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            flush()
    if buf:
        flush()
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf.astype(np.float32), total / max(n, 1)


class GatedReranker(Reranker):
    """See the module docstring. ``settings.architecture == "gated"``."""

    def __init__(self, backbone: nn.Module, tokenizer, settings: RerankerSettings, name: str = "",
                 idf: np.ndarray | None = None, avg_len: float = 0.0, scale: float = 20.0,
                 gate_init: float = -8.0, pooling: str = "mean", lexical: str = "bounded"):
        super().__init__(backbone, tokenizer, settings, name)
        if lexical not in ("bounded", "raw"):
            raise ModelLoadError(f"gated re-ranker: unknown lexical feature {lexical!r} (bounded or raw)")
        heads = backbone.config.num_attention_heads
        hidden = backbone.config.hidden_size
        self.pooling = pooling
        self.gate = nn.Parameter(torch.full((heads,), float(gate_init)))
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.w_lex = nn.Parameter(torch.tensor(0.0))
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.idf = idf  # (V,) float32 or None
        self.avg_len = float(avg_len)
        self.k1, self.b = 1.2, 0.75
        self.lexical = lexical  # "bounded" (feature in [0, 1], weight >= 0) or "raw" (models saved before)

    @classmethod
    def from_body(cls, name_or_dir: str | os.PathLike | None = None, corpus: Iterable[str] | None = None,
                  scale: float = 20.0, gate_init: float = -8.0, **settings) -> "GatedReranker":
        """A new gated re-ranker on an encoder body (``None``: the default model); idf from ``corpus``."""
        name = resolve_model(name_or_dir)
        tokenizer = load_tokenizer(name)
        idf, avg = wordpiece_idf(tokenizer, corpus) if corpus is not None else (None, 0.0)
        s = RerankerSettings(**{k: v for k, v in settings.items() if v is not None}, trained=False,
                             architecture="gated")
        from tandem.models.encoder import read_st_settings

        pooling = read_st_settings(Path(name)).get("pooling", "mean") if Path(name).is_dir() else "mean"
        return cls(load_backbone(name), tokenizer, s, name, idf, avg, scale, gate_init, pooling)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> "GatedReranker":
        path = Path(path)
        info = read_json(path / CONFIG_FILE)
        # the body lives in body/ so that the directory does not pass for a plain classifier (see save); models
        # saved before kept it at the top
        body = path / BODY_DIR if (path / BODY_DIR / "config.json").exists() else path
        extra = info.pop("gated", {})
        s = RerankerSettings(**{**info, **{k: v for k, v in overrides.items() if v is not None}})
        idf = np.load(path / IDF_FILE) if (path / IDF_FILE).exists() else None
        model = cls(load_backbone(str(body)), load_tokenizer(str(body)), s, str(path), idf, extra.get("avg_len", 0.0),
                    pooling=extra.get("pooling", "mean"), lexical=extra.get("lexical", "raw"))
        try:
            extras = torch.load(path / HEAD_FILE, map_location="cpu", weights_only=True)
        except _load_errors() as e:
            raise ModelLoadError(f"{path / HEAD_FILE}: not a readable gated re-ranker head ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        missing = set(extras) ^ {k for k in model.state_dict() if not k.startswith("model.")}
        if missing:
            raise ModelLoadError(f"{path / HEAD_FILE}: parameters do not match the gated re-ranker: {sorted(missing)}")
        model.load_state_dict(extras, strict=False)
        return model.set_backend("torch")

    # ---- inputs -----------------------------------------------------------------------------
    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, Tensor]:
        s = self.settings
        tok = self.tokenizer
        q_ids = tok(list(queries), add_special_tokens=False, truncation=True, max_length=s.query_max_length - 2,
                    return_attention_mask=False)["input_ids"]
        p_ids = tok(list(passages), add_special_tokens=False, truncation=True, max_length=s.max_length,
                    return_attention_mask=False)["input_ids"]
        ids, segs, pos, lex = [], [], [], []
        for q, p in zip(q_ids, p_ids):
            p = p[: max(1, s.max_length - len(q) - 4)]
            ids.append([tok.cls_token_id, *q, tok.sep_token_id, tok.cls_token_id, *p, tok.sep_token_id])
            segs.append([1] * (len(q) + 2) + [2] * (len(p) + 2))
            pos.append(list(range(len(q) + 2)) + list(range(len(p) + 2)))
            lex.append(self._lexical(q, p))
        batch = pad_batch(ids, tok.pad_token_id or 0, self.device, token_types=segs)
        batch["segments"] = batch.pop("token_type_ids")  # 0 marks padding
        batch["position_ids"] = pad_batch(pos, 0, self.device)["input_ids"]
        batch["lexical"] = torch.tensor(lex, dtype=torch.float32, device=self.device)
        return batch

    def _lexical(self, q: list[int], p: list[int]) -> float:
        """BM25 of the passage for the query, over word pieces (0 when no idf is stored)."""
        if self.idf is None or not p:
            return 0.0
        tf = Counter(p)
        norm = self.k1 * (1 - self.b + self.b * len(p) / max(self.avg_len, 1.0))
        bm25 = float(sum(self.idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in set(q) if t in tf))
        if self.lexical == "raw":
            return bm25
        top = float(sum(self.idf[t] for t in set(q))) * (self.k1 + 1)  # BM25 as every tf -> infinity
        return bm25 / top if top > 0 else 0.0

    def lexical_weight(self) -> Tensor:
        """The weight the lexical feature enters the score with (never below zero when bounded)."""
        return self.w_lex.clamp(min=0.0) if self.lexical == "bounded" else self.w_lex

    # ---- scoring ----------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor, segments: Tensor, position_ids: Tensor,
                lexical: Tensor) -> Tensor:
        cos, head = self._parts(input_ids, attention_mask, segments, position_ids)
        return self.scale * cos + self.lexical_weight() * lexical + head

    def _parts(self, input_ids: Tensor, attention_mask: Tensor, segments: Tensor,
               position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Cosine of the two segments (N,) and the interaction head's output (N,)."""
        cross = (segments[:, :, None] != segments[:, None, :]).to(self.gate.dtype)  # (B, L, L)
        bias = cross[:, None] * self.gate[None, :, None, None]  # (B, H, L, L)
        neg = torch.finfo(bias.dtype).min
        bias = bias.masked_fill(attention_mask[:, None, None, :] == 0, neg)
        out = self.model(input_ids=input_ids, attention_mask=bias, position_ids=position_ids,
                         token_type_ids=torch.zeros_like(input_ids))
        h = out.last_hidden_state.float()  # (B, L, H); fp32 under autocast, so the cosine keeps its precision
        if self.pooling == "mean":
            q = pool(h, (segments == 1).long(), "mean")  # (B, H)
            p = pool(h, (segments == 2).long(), "mean")  # (B, H)
        else:
            q = h[:, 0]
            p = h[torch.arange(h.size(0), device=h.device), (segments == 1).sum(1)]  # the passage's [CLS]
        cos = nn.functional.cosine_similarity(q, p, dim=-1)  # (B,)
        return cos, self.head(h[:, 0]).squeeze(-1)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # subtle: the transformer body goes to body/, not the top. At the top its config.json would let
        # sentence_transformers.CrossEncoder(dir) and AutoModelForSequenceClassification load the directory with
        # a newly initialised classifier (a warning only) and score at random; without it they fail loudly.
        for stale in ("config.json", "model.safetensors", "pytorch_model.bin"):
            (path / stale).unlink(missing_ok=True)
        self.model.save_pretrained(path / BODY_DIR, safe_serialization=True)
        self.tokenizer.save_pretrained(path / BODY_DIR)
        extras = {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}
        torch.save(extras, path / HEAD_FILE)
        if self.idf is not None:
            np.save(path / IDF_FILE, self.idf)
        from dataclasses import asdict

        info = {**asdict(self.settings), "gated": {"avg_len": self.avg_len, "pooling": self.pooling,
                                                   "lexical": self.lexical}}
        (path / CONFIG_FILE).write_text(json.dumps(info, indent=2))

    @torch.no_grad()
    def fit_mixing(self, queries: Sequence[str], passages: Sequence[str], group_size: int,
                   batch_size: int = 32) -> dict[str, float]:
        """Fit ``scale`` and ``w_lex`` to lists (positive first), the body fixed: listwise CE by LBFGS.

        ``queries`` and ``passages`` are pairs, ``group_size`` consecutive pairs per list. Cheap (one
        forward pass per pair) and it starts training from the best mix of bi-encoder and BM25.
        """
        was_training = self.training
        self.eval()
        cos, head, lex = [], [], []
        try:
            for i in range(0, len(queries), batch_size):
                batch = self.tokenize(queries[i : i + batch_size], passages[i : i + batch_size])
                c, h = self._parts(**{k: v for k, v in batch.items() if k != "lexical"})
                cos.append(c), head.append(h), lex.append(batch["lexical"])
        finally:
            self.train(was_training)
        c = torch.cat(cos).view(-1, group_size)  # (B, G)
        h = torch.cat(head).view(-1, group_size)  # (B, G)
        x = torch.cat(lex).view(-1, group_size)  # (B, G)
        labels = torch.zeros(c.size(0), dtype=torch.long, device=c.device)
        params = torch.stack([self.scale.detach(), self.w_lex.detach()]).clone().requires_grad_()

        bounded = self.lexical == "bounded"

        def loss_of(p: Tensor) -> Tensor:
            return nn.functional.cross_entropy(p[0] * c + (p[1].clamp(min=0.0) if bounded else p[1]) * x + h, labels)

        before = loss_of(params).item()
        opt = torch.optim.LBFGS([params], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            with torch.enable_grad():
                loss = loss_of(params)
                loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        after = loss_of(params).item()
        if math.isfinite(after) and after < before:
            self.scale.copy_(params[0].detach())
            self.w_lex.copy_(params[1].detach().clamp(min=0.0) if bounded else params[1].detach())
        return {"ce_before": before, "ce_after": min(before, after), "scale": float(self.scale),
                "w_lex": float(self.w_lex), "lists": int(c.size(0))}

    def describe(self) -> dict[str, float]:
        """The learned mixing weights, for logs and model cards."""
        return {"gate_mean": float(self.gate.mean()), "gate_max": float(self.gate.max()),
                "scale": float(self.scale), "w_lex": float(self.lexical_weight()),
                "head_norm": float(self.head.weight.norm())}
