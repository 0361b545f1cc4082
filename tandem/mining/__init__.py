"""``tandem mine``: RocketQAv2's hybrid data augmentation (lists that mix undenoised hard negatives with
denoised ones, plus pseudo-positives).

Mine candidates for every training query, denoise them with a re-ranker, write list pools:

1. retrieve: the top-n of a dense retriever, BM25, or both merged by reciprocal rank fusion.
   ``candidates.jsonl`` grows one line per query, so a killed run continues where it stopped.
2. warm-up (optional): a re-ranker trained on the undenoised lists (``--mode reranker``), for
   when no trained cross-encoder is at hand.
3. score: the re-ranker's logit for each candidate (the first ``denoise_top``; every candidate of a
   calibration query); ``scores.jsonl``, one line per query, resumable the same way.
4. calibrate: probabilities ``sigmoid(a * logit + b)``, with ``(a, b)`` fitted on the candidates of
   held-out training queries, labelled positives against the rest (``platt``), or ``a = 1, b = 0``
   (``sigmoid``, for a cross-encoder trained with BCE). Calibrated on the pool the lists draw from,
   a probability is what denoising needs: how likely a candidate there is a positive.
5. lists: per query, the labelled positives plus pseudo-positives (probability > ``high``), the
   undenoised pool (every candidate but the labelled positives) and the denoised pool
   (probability < ``low``, or ranked below ``low_rank`` by the re-ranker). Labelled positives
   are never negatives. The trainer draws from the pools each epoch (``denoised_share``,
   ``pseudo_positive_prob``). Written atomically, with a report (Markdown + JSON) beside.

Work files live in ``<LISTS>.mine/`` with a ``manifest.json`` of the settings each was made
with: a file made with other settings is discarded and redone, never mixed.

The package, one module a step: :mod:`~tandem.mining.candidates` (1), :mod:`~tandem.mining.denoise` (3-4 and the
deeper search), :mod:`~tandem.mining.pools` (5; :mod:`~tandem.mining.near` its near copies),
:mod:`~tandem.mining.report`, :mod:`~tandem.mining.lines` (the resumable work files),
:mod:`~tandem.mining.settings` and :mod:`~tandem.mining.run` (:func:`mine`, the steps in order). Step 2 trains,
so it is the caller's: :func:`tandem.train.api.warmup_reranker` between a mining without a re-ranker and one
with it (``tandem mine --warmup-reranker``), on the same candidates.
"""

from __future__ import annotations

from tandem.mining.candidates import Searchers, merge_rrf, retrieve
from tandem.mining.denoise import (
                                   calibrate,
                                   calibrated,
                                   deepen,
                                   denoise_subset,
                                   fit_platt,
                                   heldout_qids,
                                   high_from_precision,
                                   score_candidates,
)
from tandem.mining.lines import append_lines, done_qids, iter_lines
from tandem.mining.near import NearCopies
from tandem.mining.pools import build_pools, probabilities, queries_without_denoised, query_pools, write_lists
from tandem.mining.report import render_report, write_report
from tandem.mining.run import labelled_positives, mine
from tandem.mining.settings import MineResult, MineSettings

__all__ = ["MineResult", "MineSettings", "NearCopies", "Searchers", "append_lines", "build_pools", "calibrate",
           "calibrated", "deepen", "denoise_subset", "done_qids", "fit_platt", "heldout_qids", "high_from_precision",
           "iter_lines", "labelled_positives", "merge_rrf", "mine", "probabilities", "queries_without_denoised",
           "query_pools", "render_report", "retrieve", "score_candidates", "write_lists", "write_report"]
