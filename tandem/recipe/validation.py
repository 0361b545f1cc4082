"""Which queries decide what the recipe adopts (validation), and which split it reports on."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from tandem.errors import ConfigError
from tandem.recipe.config import RecipeConfig


def eval_split_of(cfg: RecipeConfig, directory: Path) -> str:
    """The split the report evaluates on: ``eval_split``, or with ``auto`` test where the data has it, else dev."""
    if cfg.eval_split != "auto":
        return cfg.eval_split
    from tandem.data.dataset import splits

    have = splits(directory)
    for name in ("test", "dev"):
        if name in have:
            return name
    raise ConfigError(f"{directory}: eval_split=auto finds neither a test nor a dev split (splits: {have or 'none'}); "
                      "name one with eval_split=SPLIT")


@dataclass
class Validation:
    """The queries that decide adoption: ``source`` is ``dev``-like (a split), ``heldout`` or ``none``."""

    source: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    why: str

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.queries)).encode()).hexdigest()[:16] if self.queries else ""


def heldout_share(cfg: RecipeConfig, train_ds) -> float:
    """The least ``heldout_fraction`` (to 1e-4) under which ``heldout_min_queries`` training queries with a labelled
    positive (at most ``val_max_queries``) are held out, by the hash order held-out queries follow, and not above
    ``heldout_max_fraction``."""
    from tandem.train.lists import qid_unit

    units = sorted(qid_unit(q, cfg.heldout_salt) for q, d in train_ds.qrels.items()
                   if q in train_ds.queries and any(r > 0 for r in d.values()))
    want = min(cfg.heldout_min_queries, cfg.val_max_queries, len(units))
    share = math.floor(units[want - 1] * 1e4 + 1) / 1e4 if want else 0.0  # (held out: unit < share)
    return max(cfg.heldout_fraction, min(cfg.heldout_max_fraction, share))


def validation_and_share(cfg: RecipeConfig, directory: Path, train_ds, eval_split: str
                         ) -> tuple[RecipeConfig, Validation]:
    """:func:`choose_validation`, with ``heldout_fraction`` first raised (:func:`heldout_share`) where held-out
    training queries validate and fewer than ``heldout_min_queries`` would be held out: the recipe's settings as
    they then are, and its validation queries."""
    val = choose_validation(cfg, directory, train_ds, eval_split)
    if val.source == "heldout" and len(val.queries) < min(cfg.heldout_min_queries, cfg.val_max_queries):
        cfg = replace(cfg, heldout_fraction=heldout_share(cfg, train_ds))  # (a superset: the same hash order)
        val = choose_validation(cfg, directory, train_ds, eval_split)
    return cfg, val


def choose_validation(cfg: RecipeConfig, directory: Path, train_ds, eval_split: str) -> Validation:
    """Validation queries: a dev split (not the one reported), else the training queries the trainer holds out
    (by a hash of the id with ``cfg.heldout_salt``, so they are never trained on), else none, with the reason; at most
    ``val_max_queries``, the first in the same hash order."""
    from tandem.data import load_beir
    from tandem.data.dataset import splits
    from tandem.train.lists import first_by_hash, heldout_qids

    def capped(queries: dict[str, str], qrels) -> tuple[dict[str, str], dict]:
        keep = set(first_by_hash([q for q in queries if any(r > 0 for r in qrels.get(q, {}).values())],
                                 cfg.val_max_queries, cfg.heldout_salt))
        return {q: t for q, t in queries.items() if q in keep}, {q: d for q, d in qrels.items() if q in keep}

    draw = f"drawn with seed {cfg.seed}" if cfg.heldout_draw == "seed" else "the fixed draw"
    want = cfg.validation
    if want == "none":
        return Validation("none", {}, {}, "validation=none: trained models are used without a check")
    have = splits(directory)
    if want == "auto":
        want = "dev" if "dev" in have and eval_split != "dev" and cfg.train_split != "dev" else "heldout"
    if want != "heldout":
        if want == eval_split:
            raise ConfigError(f"validation={want} is the split the report evaluates on: choose on other queries")
        ds = load_beir(directory, want, corpus=train_ds.corpus)
        every = ds.split_queries()
        q, r = capped(every, ds.qrels)
        of = f" of {len(every)}, {draw}" if len(q) < len(every) else ""
        return Validation(want, q, r, f"the {want} split ({len(q)} queries{of})")
    qids = [q for q in train_ds.qrels if q in train_ds.queries]
    n = len(qids)
    if cfg.heldout_fraction <= 0 or n < cfg.validation_min_queries:
        return Validation("none", {}, {}, f"validation is impossible: no dev split and {n} training queries "
                                          f"(fewer than {cfg.validation_min_queries} to hold any out, or "
                                          f"heldout_fraction = 0): trained models are used without a check")
    # subtle: in the qrels' order, not the set's: a set of strings iterates in an order that changes from process to
    # process (hash randomisation), and so did every sum and paired test over validation queries
    held_set = heldout_qids(qids, cfg.heldout_fraction, cfg.heldout_salt)
    held = [q for q in qids if q in held_set]
    q, r = capped({k: train_ds.queries[k] for k in held}, {k: train_ds.qrels[k] for k in held})
    return Validation("heldout", q, r, f"{len(q)} held-out training queries (heldout_fraction "
                                       f"{cfg.heldout_fraction}, {draw}; never trained on)")
