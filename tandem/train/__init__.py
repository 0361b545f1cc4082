"""Training: lists, settings, losses in use, the joint trainer and checkpoints.

The names below load on first use, so that importing a light module of the package (``tandem.train.lists``: the
training-list schema mining writes) does not import torch.
"""
from __future__ import annotations

import importlib

_WHERE = {"load_models": "api", "train": "api", "TrainConfig": "config", "load_config": "config",
          "Trainer": "joint", "TrainResult": "joint", "ListSampler": "lists", "TrainingList": "lists",
          "lists_from_run": "lists", "read_lists": "lists", "write_lists": "lists"}

__all__ = ["ListSampler", "TrainConfig", "TrainResult", "Trainer", "TrainingList", "lists_from_run", "load_config",
           "load_models", "read_lists", "train", "write_lists"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"tandem.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tandem.train' has no attribute {name!r}")
