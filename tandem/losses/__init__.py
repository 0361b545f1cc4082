"""Training objectives, each a pure function of score tensors (no models inside)."""
from __future__ import annotations

from tandem.losses.contrastive import info_nce
from tandem.losses.distill import list_kl, rocketqa_kl
from tandem.losses.listwise import group_ce
from tandem.losses.pointwise import pointwise_bce

__all__ = ["group_ce", "info_nce", "list_kl", "pointwise_bce", "rocketqa_kl"]
