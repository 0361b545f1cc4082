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
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tandem.errors import MissingDependencyError, UsageError
from tandem.io import atomic_path

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")


def cache_dir() -> Path:
    root = os.environ.get("TANDEM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tandem") / "onnx"


class _Traced(torch.nn.Module):
    """The body as ONNX export traces it: tensors in (``names`` order), hidden states or logits out."""

    def __init__(self, model: torch.nn.Module, names: list[str], classifier: bool):
        super().__init__()
        self.model, self.names, self.classifier = model, names, classifier

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs)))
        return out.logits if self.classifier else out.last_hidden_state


@contextmanager
def _eager_attention(model: torch.nn.Module):
    """Hugging Face's plain ("eager") attention while ``model`` is traced for export.

    The SDPA path exports with NaN guards (``IsNaN`` + ``Where`` over every score matrix) that took a
    quarter of ONNX Runtime's time; the eager graph is plain MatMul + Softmax (measured: int8 encoding
    39 -> 55 passages/s at 256 tokens, BENCHMARKS.md).
    """
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


@contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantiser logs a line per tensor on the root logger; keep its errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def export(backbone: torch.nn.Module, fingerprint: str, quantize: bool, classifier: bool = False,
           masked: bool = True) -> Path:
    """The ONNX file for this body (exported and maybe int8-quantised once; cached).

    The file holds the plain graph, traced with eager attention; ONNX Runtime fuses GELU and
    LayerNorm when a session loads it (``ORT_ENABLE_ALL``), so quantisation works on the standard
    operators. ``masked=False`` traces without the attention-mask input: the graph for batches with no
    padding, which skips adding a mask to every score matrix.
    """
    stem = "model-eager" + ("" if masked else "-nomask")
    target = cache_dir() / fingerprint / (f"{stem}-int8-pc.onnx" if quantize else f"{stem}.onnx")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    plain = target.parent / f"{stem}.onnx"
    if not plain.exists():
        log.info("exporting the encoder body to ONNX (%s)", plain)
        was_training = backbone.training
        backbone.eval()
        names = ["input_ids", *(["attention_mask"] if masked else []), *(["token_type_ids"] if classifier else [])]
        ids = torch.ones(2, 8, dtype=torch.long)
        example = tuple(ids if n == "input_ids" else torch.ones_like(ids) for n in names)
        axes = {n: {0: "batch", 1: "seq"} for n in names}
        axes["out"] = {0: "batch"} if classifier else {0: "batch", 1: "seq"}
        try:
            with atomic_path(plain) as tmp, torch.no_grad(), _eager_attention(backbone):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(_Traced(backbone, names, classifier), example, str(tmp), input_names=names,
                                      output_names=["out"], dynamic_axes=axes, opset_version=17, dynamo=False)
        finally:
            backbone.train(was_training)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log.info("quantising the ONNX encoder to int8 (%s)", target)
        with atomic_path(target) as tmp, _quiet_root_logger():
            # per-channel weight scales: min cosine to fp32 0.992 instead of 0.902 on SciFact passages
            quantize_dynamic(str(plain), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    return target


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxBody:
    """Runs an exported body; called like the PyTorch body (``.last_hidden_state``, or ``.logits``).

    With ``unmasked`` (the same body traced without the attention mask), batches without padding run
    that graph: most batches of length-sorted text, whose longest passages are cut at the maximum
    length, have none (the same vectors; measured 3-8% faster).
    """

    def __init__(self, path: Path, threads: int | None = None, unmasked: Path | None = None):
        self.path = path
        self.session = _session(path, threads)
        self.unmasked = _session(unmasked, threads) if unmasked is not None else None
        self.classifier = "token_type_ids" in {i.name for i in self.session.get_inputs()}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        feed = {"input_ids": input_ids.cpu().numpy().astype(np.int64)}
        session = self.session
        if self.unmasked is not None and bool(attention_mask.all()):
            session = self.unmasked
        else:
            feed["attention_mask"] = attention_mask.cpu().numpy().astype(np.int64)
        if self.classifier:  # a cross-encoder: logits
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            feed["token_type_ids"] = types.cpu().numpy().astype(np.int64)
            (logits,) = session.run(None, feed)
            return SimpleNamespace(logits=torch.from_numpy(logits))
        (hidden,) = session.run(None, feed)
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
        raise UsageError(f"backend must be one of {BACKENDS}, got {backend!r}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the ONNX backend needs onnxruntime and onnx: pip install "
                                     "'tandem-ir[onnx]'") from None
    key = weights_key(name, module) + ("-cls" if classifier else "")
    quantize = backend == "onnx-int8"
    return OnnxBody(export(module, key, quantize, classifier),
                    unmasked=export(module, key, quantize, classifier, masked=False))


__all__ = ["BACKENDS", "OnnxBody", "export", "runtime", "weights_key"]
