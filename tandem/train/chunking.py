"""Gradient caching (GradCache, Gao et al. 2021): big batches through small forward chunks.

A first pass computes the outputs of every chunk without a graph; the loss is taken on those
outputs as leaf tensors, giving their gradients; a second pass re-runs each chunk with the graph
(under the same RNG state, so dropout repeats) and back-propagates the cached gradient into it.
Peak activation memory is one chunk's, and the parameter gradients equal the plain path's.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class CachedChunks:
    """``fn`` applied to ``items`` in chunks; ``value`` is the concatenated output as a leaf tensor."""

    def __init__(self, fn: Callable[[Sequence], Tensor], items: Sequence, chunk_size: int):
        self.fn = fn
        self.chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
        self.states = []
        outs = []
        with torch.no_grad():
            for chunk in self.chunks:
                self.states.append(_rng_state())
                outs.append(fn(chunk))
        self.value = torch.cat(outs).detach().requires_grad_()

    def backward(self) -> None:
        """Replay each chunk with its graph and push ``value.grad`` into the parameters."""
        if self.value.grad is None:
            return
        end_state = _rng_state()
        offset = 0
        for chunk, state in zip(self.chunks, self.states):
            _set_rng_state(state)
            out = self.fn(chunk)
            out.backward(self.value.grad[offset : offset + len(out)])
            offset += len(out)
        _set_rng_state(end_state)
