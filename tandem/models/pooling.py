"""Pooling token states into one vector per text."""

from __future__ import annotations

from torch import Tensor

from tandem.errors import ConfigError

POOLING_MODES = ("mean", "cls")


def pool(hidden: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Pool ``hidden`` (B, L, H) under ``mask`` (B, L) into (B, H): masked mean, or the first token."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
    raise ConfigError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
