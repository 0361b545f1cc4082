"""Training: lists, settings, losses in use, the joint trainer and checkpoints."""
from __future__ import annotations

from tandem.train.api import load_models, train
from tandem.train.config import TrainConfig, load_config
from tandem.train.joint import Trainer, TrainResult
from tandem.train.lists import ListSampler, TrainingList, lists_from_run, read_lists, write_lists

__all__ = ["ListSampler", "TrainConfig", "TrainResult", "Trainer", "TrainingList", "lists_from_run", "load_config",
           "load_models", "read_lists", "train", "write_lists"]
