"""``tandem recipe`` / ``tandem demo``: the whole method as resumable stages, with a report.

baselines (BM25, zero-shot dense) -> mine the zero-shot top-n for training queries -> re-ranker
warm-up -> joint training (dynamic listwise distillation) -> index with the joint retriever ->
retrieve -> re-rank with the joint re-ranker -> evaluate -> report.json, report.md, plots.

Each stage writes under ``OUT/<stage>/`` and a ``done.json`` with its settings; a stage whose
settings (and those of the stages it reads) are unchanged is skipped, and a training stage that
was killed resumes from its last checkpoint.

The package: :mod:`~tandem.recipe.config` (the settings), :mod:`~tandem.recipe.stages` (the stage table and the
runner of one stage), :mod:`~tandem.recipe.costs` (time and memory per stage, the steps sized to a budget),
:mod:`~tandem.recipe.validation` (the queries that decide adoption), :mod:`~tandem.recipe.run` (the stages in
order, the adoption decisions) and :mod:`~tandem.recipe.report` (report.json and report.md).
"""

from __future__ import annotations

from tandem.recipe.config import (
                                  CONFIG_DIR,
                                  CPU_RATES,
                                  CPU_RATES_BF16,
                                  DEEPENED_QUERIES,
                                  DEEPENED_SCORED,
                                  FUSED_ATTENTION_SPEEDUP,
                                  HYBRID_EXTRA_PAIRS,
                                  REPORT_MEASURES,
                                  RecipeConfig,
                                  calibration_queries,
                                  default_rates,
                                  denoised_queries,
                                  load_recipe,
                                  rerank_depths,
                                  saved_heldout_salt,
                                  saved_settings,
                                  shipped_config,
)
from tandem.recipe.costs import (
                                  ACTIVATION_FIT,
                                  PROCESS_BASE_BYTES,
                                  STEP_SETTINGS,
                                  Cost,
                                  Memory,
                                  memory_plan,
                                  model_shape,
                                  plan,
                                  size_training,
                                  training_cost_factor,
)
from tandem.recipe.report import UNTRAINED, build_report, choose_served, peer_rows, render_markdown
from tandem.recipe.run import index_and_search, run_recipe, search_into, val_file
from tandem.recipe.stages import STAGE, STAGE_ORDER, STAGES, TRAINING_STAGES, Stage, Stages, chain
from tandem.recipe.validation import Validation, choose_validation, eval_split_of, heldout_share, validation_and_share

__all__ = [
    "ACTIVATION_FIT", "CONFIG_DIR", "CPU_RATES", "CPU_RATES_BF16", "DEEPENED_QUERIES", "DEEPENED_SCORED",
    "FUSED_ATTENTION_SPEEDUP", "HYBRID_EXTRA_PAIRS", "PROCESS_BASE_BYTES", "REPORT_MEASURES", "STAGE", "STAGES",
    "STAGE_ORDER", "STEP_SETTINGS", "TRAINING_STAGES", "UNTRAINED", "Cost", "Memory", "RecipeConfig", "Stage",
    "Stages", "Validation", "build_report", "calibration_queries", "chain", "choose_served", "choose_validation",
    "default_rates",
    "denoised_queries", "eval_split_of", "heldout_share", "index_and_search", "load_recipe", "memory_plan",
    "model_shape", "peer_rows", "plan", "render_markdown", "rerank_depths", "run_recipe", "saved_heldout_salt",
    "saved_settings", "search_into",
    "shipped_config", "size_training", "training_cost_factor", "val_file", "validation_and_share",
]
