"""``tandem data check``: validate a dataset directory and summarise it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tandem.data.dataset import load_dataset, qrels_path, splits
from tandem.data.trec import load_qrels
from tandem.data.types import count_missing


def check_dataset(directory: str | Path) -> dict[str, Any]:
    """Load every file of a dataset, BEIR or MS MARCO layout (raising on the first malformed line), and return
    statistics."""
    ds = load_dataset(directory, split=None)
    lengths = np.array([len(t.split()) for t in ds.corpus], dtype=np.int64)
    qlen = np.array([len(t.split()) for t in ds.queries.values()], dtype=np.int64)
    stats: dict[str, Any] = {
        "directory": str(directory),
        "passages": len(ds.corpus),
        "passage_words_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "passage_words_p95": float(np.percentile(lengths, 95)) if len(lengths) else 0.0,
        "queries": len(ds.queries),
        "query_words_mean": float(qlen.mean()) if len(qlen) else 0.0,
        "splits": {},
    }
    for split in splits(directory):
        path = qrels_path(directory, split)
        qrels = load_qrels(path)
        mq, mp = count_missing(qrels, ds.queries, ds.corpus)
        stats["splits"][split] = {
            "file": path.relative_to(directory).as_posix(),
            "queries": len(qrels),
            "judgments": sum(len(d) for d in qrels.values()),
            "relevant": sum(1 for d in qrels.values() for r in d.values() if r > 0),
            "unknown_query_judgments": mq,
            "unknown_passage_judgments": mp,
        }
    return stats
