"""``tandem train`` from Python: load data and models, build or read lists, run the trainer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tandem.data import load_beir, read_run, resolve_dataset
from tandem.errors import ConfigError, UsageError
from tandem.io import output_dir
from tandem.models.reranker import Reranker
from tandem.models.retriever import Retriever
from tandem.train.config import TrainConfig, load_config
from tandem.train.joint import Trainer, TrainResult
from tandem.train.lists import HELDOUT_SALT, lists_from_run, read_lists, write_lists
from tandem.utils import seed_everything

log = logging.getLogger(__name__)


def load_models(cfg: TrainConfig, retriever: str | None, reranker: str | None,
                corpus=None) -> tuple[Retriever | None, Reranker | None]:
    """The models a mode needs, seeded so that new heads start the same for the same seed.

    With ``reranker_arch=gated``, a re-ranker given as an encoder body (not a trained tandem
    re-ranker, nor a trained cross-encoder such as a sentence-transformers ``CrossEncoder``
    directory, which is loaded as it is) becomes a :class:`GatedReranker` with word-piece idf
    from ``corpus``.
    """
    seed_everything(cfg.seed)
    r = ce = None
    if cfg.mode in ("joint", "static", "retriever"):
        extra: dict[str, Any] = {}
        if cfg.pooling:
            extra["pooling"] = cfg.pooling
        if cfg.normalize:
            extra["normalize"] = cfg.normalize == "true"
        r = Retriever.from_pretrained(retriever, shared=cfg.shared_towers, temperature=cfg.temperature,
                                      query_max_length=cfg.query_max_length,
                                      passage_max_length=cfg.passage_max_length, **extra)
    if cfg.mode in ("joint", "static", "reranker"):
        ce = None
        if cfg.reranker_arch == "gated":
            from tandem.models.gated import GatedReranker
            from tandem.models.hf import is_cross_encoder, resolve_model
            from tandem.models.reranker import CONFIG_FILE

            name = resolve_model(reranker)
            if not (Path(name) / CONFIG_FILE).exists() and not is_cross_encoder(name):
                ce = GatedReranker.from_body(reranker, corpus=corpus, scale=1.0 / cfg.temperature,
                                             gate_init=cfg.gate_init, max_length=cfg.reranker_max_length,
                                             query_max_length=cfg.query_max_length)
        if ce is None:
            ce = Reranker.from_pretrained(reranker, max_length=cfg.reranker_max_length)
    return r, ce


def train(data: str | Path, out: str | Path, lists: str | Path | None = None, run: str | Path | None = None,
          top_n: int = 50, split: str = "train", retriever: str | None = None, reranker: str | None = None,
          config: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None,
          resume: bool = False, progress: bool = True, validator=None) -> TrainResult:
    """Train per ``config`` + ``overrides`` on lists read from ``lists`` or built from ``run`` + qrels.

    ``OUT`` receives ``retriever/`` and/or ``reranker/``, ``config.json``, ``metrics.jsonl`` and
    ``checkpoints/``; ``resume`` continues a killed run from its latest checkpoint. ``validator`` (a
    :class:`tandem.train.validation.StageValidator`) is what ``keep_best`` validates on in place of the held-out
    lists' queries.
    """
    cfg = load_config(config, overrides)
    directory = resolve_dataset(data)
    if (lists is None) == (run is None):
        raise UsageError("give the training lists (--lists LISTS.jsonl) or a run to build them from (--run RUN.trec)")
    out = output_dir(out, make=False)
    ds = load_beir(directory, split if lists is None else None)  # lists need no qrels
    if lists is not None:
        training = read_lists(lists, ds.corpus, ds.queries)
    else:
        training = lists_from_run(read_run(run), ds.qrels, ds.corpus, top_n, queries=ds.queries)
        write_lists(out / "lists.jsonl", training)
    if not training:
        raise UsageError("no training lists")
    r, ce = load_models(cfg, retriever, reranker, ds.corpus)
    trainer = Trainer(cfg, ds.corpus, ds.queries, training, out, r, ce, progress=progress, validator=validator)
    return trainer.train(resume=resume)


def warmup_reranker(data: str | Path, lists: str | Path, out: str | Path, steps: int,
                    overrides: dict[str, Any] | list[str] | None = None, heldout_fraction: float = 0.1,
                    progress: bool = True, heldout_salt: str = HELDOUT_SALT) -> Path:
    """A re-ranker (``--mode reranker``, the gated architecture unless ``overrides`` say otherwise) trained for
    ``steps`` on the training lists ``lists`` (the undenoised lists ``tandem mine`` writes without a re-ranker), for
    when no trained cross-encoder is at hand to denoise with; its directory ``out/reranker``.

    ``heldout_fraction`` of the queries (by a hash of the id with ``heldout_salt``: mining's calibration queries at
    its ``calibration_fraction`` and ``heldout_salt``) are held out, so that the re-ranker is calibrated on queries it
    never trained on. Resumable (a killed warm-up continues from its checkpoint), and done once for the same settings
    and lists: other settings train it afresh.
    """
    import shutil

    from tandem.io import read_json, sha256_file, write_json
    from tandem.settings import parse_overrides

    out = Path(out)
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    if str(extra.get("heldout_salt", heldout_salt)) != heldout_salt:  # it would train on the calibration queries
        raise ConfigError(f"heldout_salt={extra['heldout_salt']} for the warm-up, {heldout_salt} for the "
                          "calibration: set it once, as a mining setting, and the warm-up holds out the same queries")
    if float(extra.get("heldout_fraction", heldout_fraction)) < heldout_fraction:  # (a larger one: a superset)
        raise ConfigError(f"heldout_fraction={extra['heldout_fraction']} for the warm-up is below the calibration's "
                          f"{heldout_fraction}: it would train on calibration queries")
    ov = {"reranker_arch": "gated", "heldout_fraction": heldout_fraction, "heldout_salt": heldout_salt, **extra,
          "mode": "reranker", "max_steps": steps}
    key = {"steps": steps, "overrides": ov, "lists": sha256_file(lists)}
    done = out / "done.json"
    if done.exists() and read_json(done).get("key") == key:
        return out / "reranker"
    started = out / "started.json"
    if out.exists() and not (started.exists() and read_json(started).get("key") == key):
        log.warning("warm-up: %s was trained with other settings or lists; training afresh", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(started, {"key": key})
    log.info("warming up a re-ranker for %d steps on %s", steps, lists)
    train(data, out, lists=lists, overrides=ov, resume=True, progress=progress)
    write_json(done, {"key": key, "steps": steps})
    return out / "reranker"
