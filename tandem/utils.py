"""Progress bars, timing and seeding shared by the library."""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import Iterator

import numpy as np


def inference_device() -> str:
    """Where loaded models run: ``$TANDEM_DEVICE`` if set, else this process's GPU (``cuda:LOCAL_RANK``
    under torchrun) when there is one, else the CPU. Training moves models to its own ``device`` setting."""
    import torch

    if os.environ.get("TANDEM_DEVICE"):
        return os.environ["TANDEM_DEVICE"]
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


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
