"""KL distillation between two list distributions (RocketQAv2's L_kl)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tandem.errors import ConfigError

DIRECTIONS = ("ce_to_de", "de_to_ce")
REDUCTIONS = ("batchmean", "mean")


def list_kl(teacher_scores: Tensor, student_scores: Tensor, tau_teacher: float = 1.0, tau_student: float = 1.0,
            reduction: str = "batchmean") -> Tensor:
    """``KL(P_t || P_s) = sum_p P_t log(P_t / P_s)`` over each list, averaged.

    ``P_t = softmax(teacher / tau_teacher)``, ``P_s = softmax(student / tau_student)``. Gradients flow
    into both score tensors: nothing is detached here (detach the teacher for static distillation).

    Args:
        teacher_scores: (B, G).
        student_scores: (B, G).
        reduction: ``batchmean`` divides the summed KL by B (the per-query KL, averaged);
            ``mean`` divides by B * G, as Paddle's ``kldiv_loss`` default in the official RocketQAv2 code.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    log_p_t = F.log_softmax(teacher_scores / tau_teacher, dim=-1)  # (B, G)
    log_p_s = F.log_softmax(student_scores / tau_student, dim=-1)  # (B, G)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl / (teacher_scores.numel() if reduction == "mean" else teacher_scores.size(0))


def rocketqa_kl(ce_scores: Tensor, de_scores: Tensor, tau_de: float = 1.0, direction: str = "ce_to_de",
                reduction: str = "batchmean", tau_ce: float = 1.0) -> Tensor:
    """RocketQAv2's distillation term between the re-ranker (ce) and the retriever (de).

    ``ce_to_de`` (the paper's code): ``KL(P_ce || P_de)``; ``de_to_ce``: ``KL(P_de || P_ce)``.
    The retriever's scores are divided by ``tau_de``; the re-ranker's logits by ``tau_ce`` (1: as they are, the
    paper's code; above 1 a softer teacher, as in knowledge distillation).
    """
    if direction == "ce_to_de":
        return list_kl(ce_scores, de_scores, tau_ce, tau_de, reduction)
    if direction == "de_to_ce":
        return list_kl(de_scores, ce_scores, tau_de, tau_ce, reduction)
    raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
