"""Progress bars, timing and seeding shared by the library."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import time
from typing import Iterator

import numpy as np

from tandem.errors import ConfigError


def inference_device() -> str:
    """Where loaded models run: ``$TANDEM_DEVICE`` if set, else this process's GPU (``cuda:LOCAL_RANK``
    under torchrun) when there is one, else the CPU. Training moves models to its own ``device`` setting."""
    import torch

    if os.environ.get("TANDEM_DEVICE"):
        return os.environ["TANDEM_DEVICE"]
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls in hardware (AVX-512 BF16 or AMX), where oneDNN runs them
    ~2.4x faster than fp32 (BENCHMARKS.md); elsewhere bf16 on a CPU is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_backend(backend: str, onnx_ok: bool = True, gpu: bool | None = None) -> tuple[str, str]:
    """``(backend, why)``: ``auto`` becomes the fastest runtime measured for this machine (BENCHMARKS.md) within
    0.005 nDCG@10: PyTorch on a GPU or on a CPU with native bf16 (AVX-512 BF16 / AMX: bf16, 2.8x fp32
    encoding), else int8 ONNX Runtime where it is installed (2.1x PyTorch fp32 on an AVX2 CPU, -0.003 nDCG@10 on
    SciFact), else PyTorch. ``onnx_ok``: the model can run in ONNX Runtime (a gated re-ranker cannot); ``gpu``:
    whether models run on a GPU (None: ask :func:`inference_device`, which imports torch)."""
    if backend != "auto":
        return backend, "asked for"
    import importlib.util

    if gpu is None:
        gpu = inference_device().startswith("cuda")
    if gpu:
        return "torch", "a GPU: PyTorch (bf16)"
    if cpu_has_native_bf16():
        return "torch", "a CPU with native bf16 (AVX-512 BF16 / AMX): PyTorch in bf16"
    if not onnx_ok:
        return "torch", "this model runs in PyTorch only"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", ("no native bf16 and no onnxruntime installed (pip install 'tandem-ir[onnx]' for int8): "
                         "PyTorch fp32")
    return "onnx-int8", "a CPU without native bf16: int8 ONNX Runtime (2.1x PyTorch fp32, -0.003 nDCG@10 measured)"


def resolve_precision(precision: str | None, device) -> str:
    """``fp32`` or ``bf16`` for ``device``: ``precision`` if it is fp32 or bf16, else (None or auto)
    ``$TANDEM_PRECISION`` if set, else auto: bf16 where the hardware computes it natively (a CUDA GPU with
    bf16, or a CPU with AVX-512 BF16 / AMX), fp32 elsewhere."""
    import torch

    if precision in (None, "auto"):
        precision = os.environ.get("TANDEM_PRECISION") or "auto"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(precision: str | None, device):
    """A bf16 autocast context for ``device`` when :func:`resolve_precision` says bf16, else a no-op.
    Weights (and optimiser states) stay fp32; matmuls run in bf16."""
    import torch

    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_BF16_COPY = {"enabled": True}


def set_bf16_inference_copy(enabled: bool) -> bool:
    """Whether bf16 inference runs a bf16 copy of the weights (the default: the inference commands) or bf16
    autocast over the fp32 weights. The recipe turns the copy off: its stages interleave training and inference
    in one process, where the copy bought the demo no wall time (501 s against 498 s, NFCorpus, AMX Xeon) and
    may have raised its peak resident memory (2.64-2.81 GB without it, 2.83-3.00 GB with it). Returns the setting
    before."""
    before, _BF16_COPY["enabled"] = _BF16_COPY["enabled"], bool(enabled)
    return before


def inference_body(model, body):
    """``(module, context)`` for one PyTorch inference batch of a loaded encoder or re-ranker ``model`` whose
    network is ``body``. Where :func:`resolve_precision` says bf16, the module is a bf16 copy of ``body``
    (weights cast once, not on every call as autocast does: 1.17x the encoding speed of bf16 autocast on an AMX
    CPU, the same precision sentence-transformers users get from bf16 weights), rebuilt whenever ``body``'s
    weights change (training, ``load_state_dict``: any in-place write bumps a tensor's version); elsewhere
    ``body`` itself with no context. The copy lives beside ``model``, not inside it: it is neither saved nor
    trained. ONNX Runtime models (``model.runtime``) get ``body`` and no context."""
    if model.runtime is not None or resolve_precision(model.precision, model.device) != "bf16":
        return body, contextlib.nullcontext()
    if not _BF16_COPY["enabled"]:
        return body, inference_autocast(model)
    import copy

    import torch

    tensors = list(itertools.chain(body.parameters(), body.buffers()))
    key = tuple((id(t), t._version) for t in tensors)
    cached = model.__dict__.get("_bf16_body")
    if cached is None or cached[0] != key:
        model.__dict__["_bf16_body"] = None  # the old copy goes before the new one is made
        with torch.no_grad():  # each tensor cast straight to bf16: no fp32 copy of the body is ever made
            memo = {id(t): (torch.nn.Parameter(t.to(torch.bfloat16), requires_grad=False)
                            if isinstance(t, torch.nn.Parameter) else t.to(torch.bfloat16) if t.is_floating_point()
                            else t.clone()) for t in tensors}
        cached = (key, copy.deepcopy(body, memo).eval())
        model.__dict__["_bf16_body"] = cached
    return cached[1], contextlib.nullcontext()


def inference_autocast(model):
    """:func:`autocast` for a loaded encoder or re-ranker's PyTorch inference, at its ``precision`` (None:
    ``$TANDEM_PRECISION`` or auto); a no-op when it runs in ONNX Runtime (``model.runtime``)."""
    return autocast(model.precision, model.device) if model.runtime is None else contextlib.nullcontext()


def device_name(device: str | None = None) -> str:
    """The accelerator's name (e.g. 'NVIDIA H200') for ``device`` (default: :func:`inference_device`), or 'cpu'."""
    import torch

    device = device or inference_device()
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def progress_enabled(requested: bool) -> bool:
    """Bars show when asked for, unless ``TANDEM_NO_PROGRESS`` is set."""
    return requested and not os.environ.get("TANDEM_NO_PROGRESS")


_CONTEXT: list[str] = []


@contextlib.contextmanager
def progress_context(label: str) -> Iterator[None]:
    """Prefix every progress bar opened inside with ``label`` (e.g. the recipe's stage and time left)."""
    _CONTEXT.append(label)
    try:
        yield
    finally:
        _CONTEXT.pop()


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "it", initial: int = 0) -> Iterator:
    from tqdm.auto import tqdm

    if _CONTEXT:
        desc = f"{_CONTEXT[-1]} {desc}"
    bar = tqdm(total=total, desc=desc, disable=not progress_enabled(enabled), unit=unit, dynamic_ncols=True,
               leave=False, initial=initial)
    try:
        yield bar
    finally:
        bar.close()


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def release_memory() -> None:
    """Collect garbage and hand the allocator's free memory back to the OS (glibc ``malloc_trim``), so that one
    stage's transient peak is not carried as resident memory into the next: ``scripts/env.sh`` keeps freed
    memory mapped within a stage, where reusing it saves page faults. A no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``; 0 where that is not readable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryWatch:
    """``with MemoryWatch() as m: ...`` then ``m.peak``: the highest resident memory seen while inside, sampled
    every ``interval`` seconds by a daemon thread (the kernel's own high-water mark covers the whole process, and
    resetting it would falsify what ``time -v`` reports, so a stage's peak is sampled)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "MemoryWatch":
        import threading

        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="tandem-memory-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
