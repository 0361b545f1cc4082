"""A text encoder: transformer body + pooling (+ optional L2 normalisation).

It reads and writes the sentence-transformers directory layout (``modules.json``,
``1_Pooling/config.json``, ``sentence_bert_config.json``), so a directory it saves loads in
``SentenceTransformer(dir)`` and gives the same vectors, and any SentenceTransformer directory
loads here with its own pooling, normalisation and max length.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tandem.errors import ConfigError
from tandem.io import read_json
from tandem.models.hf import load_backbone, load_tokenizer, resolve_model
from tandem.models.pooling import POOLING_MODES, pool
from tandem.utils import inference_body, progress_bar

log = logging.getLogger(__name__)

SETTINGS_FILE = "tandem_encoder.json"


@dataclass
class EncoderSettings:
    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 256
    prefix: str = ""

    def __post_init__(self):
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")


def read_st_settings(path: Path) -> dict:
    """Pooling, normalisation and max length recorded in a sentence-transformers (or tandem) directory."""
    found: dict = {}
    if (path / SETTINGS_FILE).exists():
        found.update(read_json(path / SETTINGS_FILE))
        return found
    modules = path / "modules.json"
    if modules.exists():
        mods = read_json(modules)
        found["normalize"] = any(m.get("type", "").endswith("Normalize") for m in mods)
        for m in mods:
            if m.get("type", "").endswith("Pooling"):
                cfg_path = path / m.get("path", "") / "config.json"
                if cfg_path.exists():
                    cfg = read_json(cfg_path)
                    mode = cfg.get("pooling_mode")
                    if mode is None:
                        mode = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
                    if mode not in POOLING_MODES:
                        raise ConfigError(f"{cfg_path}: pooling {mode!r} is not supported (use mean or cls)")
                    found["pooling"] = mode
    sbert = path / "sentence_bert_config.json"
    if sbert.exists():
        msl = read_json(sbert).get("max_seq_length")
        if msl:
            found["max_length"] = int(msl)
    return found


def write_st_layout(path: Path, settings: EncoderSettings, dim: int, prompts: dict[str, str] | None = None) -> None:
    """The sentence-transformers files that describe pooling, normalisation and max length."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if settings.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": settings.pooling == "cls",
        "pooling_mode_mean_tokens": settings.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": settings.max_length,
                                                                 "do_lower_case": False}, indent=2))
    (path / "config_sentence_transformers.json").write_text(json.dumps({
        "model_type": "SentenceTransformer",
        "prompts": prompts or {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if settings.normalize else "dot",
    }, indent=2))


@dataclass
class EncoderOutput:
    reps: Tensor  # (B, H)


class Encoder(nn.Module):
    """Transformer body + pooling. ``encode`` batches texts sorted by token length."""

    def __init__(self, backbone: nn.Module, tokenizer, settings: EncoderSettings, name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.settings = settings
        self.name = name
        self.runtime = None  # an ONNX Runtime body for inference (set_backend), else the PyTorch one
        self.backend = "torch"
        self.precision: str | None = None  # inference precision (auto, fp32, bf16); None: $TANDEM_PRECISION or auto

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike | None = None, **overrides) -> "Encoder":
        """Load from a hub id or directory; ``overrides`` (pooling, normalize, max_length, prefix) win
        over what the directory records. ``None`` is the embedded all-MiniLM-L6-v2. ``backend``
        (torch, onnx, onnx-int8) picks the inference runtime (training always uses PyTorch)."""
        backend = overrides.pop("backend", None) or "torch"
        precision = overrides.pop("precision", None)
        name = resolve_model(name_or_dir)
        recorded = read_st_settings(Path(name)) if Path(name).is_dir() else {}
        values = {**recorded, **{k: v for k, v in overrides.items() if v is not None}}
        settings = EncoderSettings(**{k: v for k, v in values.items() if k in EncoderSettings.__dataclass_fields__})
        enc = cls(load_backbone(name), load_tokenizer(name), settings, name=name)
        enc.precision = precision
        return enc.set_backend(backend)

    def set_backend(self, backend: str) -> "Encoder":
        """Run inference (``encode``) in PyTorch or ONNX Runtime (``onnx``, ``onnx-int8``; ``auto``: see
        :func:`tandem.utils.resolve_backend`)."""
        from tandem.models.onnx_backend import runtime
        from tandem.utils import inference_device, resolve_backend

        backend = resolve_backend(backend)[0]
        self.to(inference_device() if backend == "torch" else "cpu")  # ONNX Runtime runs on the CPU here
        self.runtime, self.backend = runtime(self.backbone, self.name, backend), backend
        return self

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def tokenize(self, texts: Sequence[str], max_length: int | None = None,
                 prefix: str | None = None) -> list[list[int]]:
        """Token ids per text (with special tokens, truncated), no padding; defaults from ``settings``."""
        max_length = max_length or self.settings.max_length
        prefix = self.settings.prefix if prefix is None else prefix
        if prefix:
            texts = [prefix + t for t in texts]
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True,
                             return_attention_mask=False, return_token_type_ids=False)
        return enc["input_ids"]

    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """Right-pad token ids into a batch on the model's device."""
        return pad_batch(ids, self.tokenizer.pad_token_id or 0, self.device)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, body: nn.Module | None = None,
                **kwargs) -> EncoderOutput:
        """``body``: the network to run instead of ``backbone`` (the bf16 copy :func:`inference_body` gives)."""
        if self.runtime is not None and not torch.is_grad_enabled():
            out = self.runtime(input_ids, attention_mask)
        else:
            out = (body or self.backbone)(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        reps = pool(out.last_hidden_state.float(), attention_mask, self.settings.pooling)  # (B, H), fp32 under autocast
        if self.settings.normalize:
            reps = nn.functional.normalize(reps, dim=-1)
        return EncoderOutput(reps=reps)

    def embed(self, texts: Sequence[str]) -> Tensor:
        """Vectors (B, H) with gradients, for training."""
        return self(**self.collate(self.tokenize(texts))).reps

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False,
               chunk_size: int = 8192, desc: str = "encoding", dtype=np.float32) -> np.ndarray:
        """Encode texts to a (N, H) array in input order.

        Texts are tokenised in chunks of ``chunk_size``, sorted by token length within a chunk and
        batched, so padding is minimal and memory does not grow with N beyond the output.
        """
        out = np.empty((len(texts), self.dim), dtype=dtype)
        for start, vecs in self.iter_encode(texts, batch_size, progress, chunk_size, desc):
            out[start : start + len(vecs)] = vecs
        return out

    @torch.inference_mode()
    def iter_encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False,
                    chunk_size: int = 8192, desc: str = "encoding") -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, vectors)`` for consecutive chunks of ``texts``."""
        was_training = self.training
        self.eval()
        try:
            with progress_bar(total=len(texts), desc=desc, enabled=progress, unit="text") as bar:
                for start in range(0, len(texts), chunk_size):
                    chunk = texts[start : start + chunk_size]
                    ids = self.tokenize(chunk)
                    order = np.argsort([-len(x) for x in ids], kind="stable")
                    vecs = np.empty((len(chunk), self.dim), dtype=np.float32)
                    for b in range(0, len(order), batch_size):
                        sel = order[b : b + batch_size]
                        body, context = inference_body(self, self.backbone)  # per batch: training between
                        with context:  # yields (the recipe's validation) makes a new bf16 copy
                            reps = self(**self.collate([ids[i] for i in sel]), body=body).reps
                        vecs[sel] = reps.float().cpu().numpy()
                        bar.update(len(sel))
                    yield start, vecs
        finally:
            self.train(was_training)

    def save(self, path: str | os.PathLike, prompts: dict[str, str] | None = None) -> None:
        """Write weights, tokenizer and the sentence-transformers layout into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        write_st_layout(path, self.settings, self.dim, prompts)
        (path / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2))


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu",
              token_types: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
    """Right-pad lists of token ids to (B, L) ``input_ids`` and ``attention_mask`` (+ ``token_type_ids``)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
    if token_types is not None:
        tt = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(token_types):
            tt[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        batch["token_type_ids"] = tt.to(device)
    return batch
