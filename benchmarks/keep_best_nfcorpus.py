"""Validation while training on NFCorpus: the demo's retriever warm-up settings for 40 steps, validated every 10
over the whole corpus (keep_best), printing each validation and the step kept.

    python benchmarks/keep_best_nfcorpus.py OUT [DEMO_RUN]   # DEMO_RUN: a `tandem demo --data nfcorpus` output
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tandem.train import train

run = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/m5-nf-s1")
cfg = json.loads((run / "retriever-warmup" / "config.json").read_text())
drop = ("device", "log_every", "save_every")
over = {k: v for k, v in cfg.items() if k not in drop} | {"max_steps": 40, "keep_best": True, "eval_every": 10}
out = Path(sys.argv[1])
t = time.perf_counter()
res = train("nfcorpus", out, lists=run / "lists" / "lists.jsonl", retriever=None, overrides=over, resume=True,
            progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "validation": res.validation}, indent=1))
