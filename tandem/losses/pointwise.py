"""Pointwise binary cross-entropy for a re-ranker (the paper's pointwise ablation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pointwise_bce(scores: Tensor) -> Tensor:
    """Mean BCE-with-logits over every (query, passage) pair: label 1 for column 0, 0 elsewhere.

    Args:
        scores: (B, G) logits; column 0 is each query's positive.
    """
    labels = torch.zeros_like(scores)  # (B, G)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(scores, labels)
