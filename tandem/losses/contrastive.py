"""InfoNCE for the retriever on its lists, optionally with in-batch negatives (DPR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(q: Tensor, p: Tensor, group_size: int, tau: float = 1.0, in_batch: bool = False) -> Tensor:
    """Contrastive loss of each query against its own list (positive first), or against every passage.

    Args:
        q: (B, H) query vectors.
        p: (B * G, H) passage vectors; rows ``b*G .. b*G+G-1`` are query b's list, positive first.
        group_size: G.
        tau: temperature dividing dot products.
        in_batch: score each query against all B*G passages (others' lists become negatives).
    """
    b = q.size(0)
    if in_batch:
        scores = q @ p.T  # (B, B*G)
        labels = torch.arange(b, device=q.device) * group_size  # (B,)
    else:
        scores = torch.einsum("bh,bgh->bg", q, p.view(b, group_size, -1))  # (B, G)
        labels = torch.zeros(b, dtype=torch.long, device=q.device)  # (B,)
    return F.cross_entropy(scores / tau, labels)
