"""Listwise cross-entropy on groups whose column 0 is the positive (RocketQAv2's L_sup)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def group_ce(scores: Tensor, tau: float = 1.0) -> Tensor:
    """``-mean_q log softmax(scores_q / tau)[0]``: listwise CE against the positive in column 0.

    Args:
        scores: (B, G) scores of each query's list; column 0 is the positive.
        tau: temperature dividing the scores.
    """
    labels = torch.zeros(scores.size(0), dtype=torch.long, device=scores.device)  # (B,)
    return F.cross_entropy(scores / tau, labels)
