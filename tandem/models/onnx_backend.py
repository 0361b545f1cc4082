"""ONNX Runtime inference for encoder bodies: export once, optionally quantise to int8, run optimised.

``Encoder.from_pretrained(name, backend="onnx" | "onnx-int8")`` (and ``--backend`` on ``tandem index``,
``search``, ``serve`` and ``mine``) runs the transformer body in ONNX Runtime; tokenisation, pooling and
normalisation stay tandem's, so the vectors match the PyTorch path (fp32: to float precision; int8:
close, see BENCHMARKS.md for the retrieval quality it keeps). Exported models are cached by model
fingerprint under ``$TANDEM_CACHE/onnx`` (default ``~/.cache/tandem/onnx``), written atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tandem.errors import TandemError
from tandem.io import atomic_path

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")


def cache_dir() -> Path:
    root = os.environ.get("TANDEM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tandem") / "onnx"


class _Body(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, attention_mask):
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _Classifier(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export(backbone: torch.nn.Module, fingerprint: str, quantize: bool, classifier: bool = False) -> Path:
    """The ONNX file for this body (exported and maybe int8-quantised once; cached).

    The file holds the plain graph; ONNX Runtime fuses attention, GELU and LayerNorm when a session
    loads it (``ORT_ENABLE_ALL``), so quantisation works on the standard operators.
    """
    target = cache_dir() / fingerprint / ("model-int8-pc.onnx" if quantize else "model.onnx")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    plain = target.parent / "model.onnx"
    if not plain.exists():
        log.info("exporting the encoder body to ONNX (%s)", plain)
        was_training = backbone.training
        backbone.eval()
        ids = torch.ones(2, 8, dtype=torch.long)
        names = ["input_ids", "attention_mask", "token_type_ids"] if classifier else ["input_ids", "attention_mask"]
        module = _Classifier(backbone) if classifier else _Body(backbone)
        axes = {n: {0: "batch", 1: "seq"} for n in names}
        axes["out"] = {0: "batch"} if classifier else {0: "batch", 1: "seq"}
        try:
            with atomic_path(plain) as tmp, torch.no_grad():
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, tuple(torch.ones_like(ids) if i else ids for i in range(len(names))),
                                      str(tmp), input_names=names, output_names=["out"], dynamic_axes=axes,
                                      opset_version=17, dynamo=False)
        finally:
            backbone.train(was_training)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log.info("quantising the ONNX encoder to int8 (%s)", target)
        with atomic_path(target) as tmp:
            # per-channel weight scales: min cosine to fp32 0.992 instead of 0.902 on SciFact passages
            quantize_dynamic(str(plain), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    return target


class OnnxBody:
    """Runs an exported body; called like the PyTorch body (returns ``.last_hidden_state``)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        feed = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        if len(self.session.get_inputs()) == 3:  # a cross-encoder: logits
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            feed["token_type_ids"] = types.cpu().numpy().astype(np.int64)
            (logits,) = self.session.run(None, feed)
            return SimpleNamespace(logits=torch.from_numpy(logits))
        (hidden,) = self.session.run(None, feed)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


def weights_key(name: str, module: torch.nn.Module) -> str:
    """An identity for a model's weights: its files' fingerprint plus a checksum of the loaded tensors."""
    from tandem.models.hf import model_fingerprint

    params = list(module.parameters())
    check = sum(float(p.detach().double().abs().sum()) for p in (params[0], params[-1]))
    return f"{model_fingerprint(name)}-{check:.8e}".replace("/", "__")


def runtime(module: torch.nn.Module, name: str, backend: str, classifier: bool = False) -> OnnxBody | None:
    """The inference runtime for ``backend``: None for torch, else the cached ONNX export of ``module``."""
    if backend == "torch":
        return None
    if backend not in BACKENDS[1:]:
        raise TandemError(f"backend must be one of {BACKENDS}, got {backend!r}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise TandemError("the ONNX backend needs onnxruntime and onnx: pip install 'tandem-ir[onnx]'") from None
    key = weights_key(name, module) + ("-cls" if classifier else "")
    return OnnxBody(export(module, key, backend == "onnx-int8", classifier))


__all__ = ["BACKENDS", "OnnxBody", "export", "runtime", "weights_key"]
