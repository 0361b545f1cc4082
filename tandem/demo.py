"""``tandem demo``: the end-to-end run on a dataset, writing ``report.json`` and ``report.md``.

Stages write their artefacts under the output directory and are skipped when the artefact is
already there with the same settings, so a killed demo resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from tandem.data import load_beir, read_run, resolve_dataset, write_run
from tandem.eval.metrics import evaluate
from tandem.io import atomic_open, manifest, read_json, write_json

log = logging.getLogger(__name__)

REPORT_MEASURES = ("nDCG@10", "RR@10", "R@100")


class Stages:
    """Runs named stages once: a stage whose ``done.json`` records the same settings is skipped."""

    def __init__(self, out: Path):
        self.out = out
        self.seconds: dict[str, float] = {}

    def run(self, name: str, settings: dict[str, Any], fn: Callable[[Path], None]) -> Path:
        stage_dir = self.out / name
        done = stage_dir / "done.json"
        if done.exists() and read_json(done).get("settings") == settings:
            self.seconds[name] = float(read_json(done).get("seconds", 0.0))
            log.info("stage %s: up to date, skipped", name)
            return stage_dir
        log.info("stage %s: running", name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        fn(stage_dir)
        self.seconds[name] = time.perf_counter() - t0
        write_json(done, manifest("stage", name=name, settings=settings, seconds=self.seconds[name]))
        return stage_dir


def run_demo(data: str = "scifact", out: str | Path = "runs/demo", max_length: int = 256, progress: bool = True,
             ) -> dict[str, Any]:
    """BM25 and zero-shot dense retrieval on the test split, evaluated; returns the report dict."""
    from tandem.index.bm25 import BM25
    from tandem.index.dense import build_index, dense_search, load_index_and_encoder
    from tandem.models.encoder import Encoder

    t_start = time.perf_counter()
    out = Path(out)
    directory = resolve_dataset(data)
    ds = load_beir(directory, "test")
    queries = ds.split_queries()
    stages = Stages(out)

    def bm25_stage(d: Path) -> None:
        write_run(d / "run.trec", BM25(ds.corpus, progress=progress).search(queries, 1000))

    def index_stage(d: Path) -> None:
        build_index(ds.corpus, d / "index", Encoder.from_pretrained(None, max_length=max_length), progress=progress)

    def zs_stage(d: Path) -> None:
        index, encoder = load_index_and_encoder(out / "index" / "index")
        write_run(d / "run.trec", dense_search(index, encoder, queries, 1000, progress=progress))

    systems: dict[str, dict[str, float]] = {}
    base = {"data": str(directory.resolve()), "split": "test"}
    for name, settings, fn, stage_names in (
            ("bm25", {**base, "k": 1000}, bm25_stage, ["bm25"]),
            ("zero-shot", {**base, "max_length": max_length}, None, ["index", "zero-shot"])):
        if fn is not None:
            stages.run(name, settings, fn)
        else:
            stages.run("index", settings, index_stage)
            stages.run("zero-shot", settings, zs_stage)
        metrics = evaluate(read_run(out / name / "run.trec"), ds.qrels, REPORT_MEASURES)
        systems[name] = {**metrics, "seconds": sum(stages.seconds[s] for s in stage_names)}
    report = {"data": str(directory), "split": "test", "queries": len(queries), "systems": systems,
              "stage_seconds": stages.seconds, "total_seconds": time.perf_counter() - t_start}
    write_json(out / "report.json", report)
    with atomic_open(out / "report.md") as f:
        f.write(render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# tandem report: {Path(report['data']).name} ({report['split']}, {report['queries']} queries)", "",
             "| system | " + " | ".join(REPORT_MEASURES) + " | seconds |",
             "|---" * (len(REPORT_MEASURES) + 2) + "|"]
    for name, vals in report["systems"].items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[m]:.4f}" for m in REPORT_MEASURES)
                     + f" | {vals['seconds']:.0f} |")
    lines += ["", f"Total wall time: {report['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)
