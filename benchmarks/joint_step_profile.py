"""Where a joint training step's time goes (issue 22): the demo's joint stage, profiled op by op.

Takes a recipe run directory and rebuilds its joint stage as it ran: the same starting models (the adopted
retriever, or the zero-shot one; the warmed-up re-ranker), the same lists and the same settings (``joint/done.json``),
on this machine. It trains ``--skip`` steps unprofiled (allocator and kernel warm-up), then ``--steps`` steps under
``torch.profiler`` (CPU), and prints the seconds a step, each phase's share of the step (the retriever's forward
passes, the re-ranker's forward and backward, the retriever's backward, the optimiser), and the ops with the most
self CPU time, with the share that is matrix multiplication (the part bf16/AMX accelerates) and the rest.

    python benchmarks/joint_step_profile.py runs/scifact-ce1-s1 --steps 3 --out runs/bench/joint_step_profile.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
          "mkldnn", "onednn")


def main() -> None:
    import torch

    from tandem.data import load_beir, resolve_dataset
    from tandem.train.api import load_models
    from tandem.train.config import load_config
    from tandem.train.joint import Trainer
    from tandem.train.lists import read_lists

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a recipe run directory with a finished joint stage")
    ap.add_argument("--skip", type=int, default=1, help="unprofiled steps first")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    done = json.loads((args.run / "joint" / "done.json").read_text())["settings"]
    recipe = json.loads((args.run / "recipe.json").read_text())
    directory = resolve_dataset(recipe["data_dir"] if Path(recipe["data_dir"]).is_dir() else recipe["data"])
    ds = load_beir(directory, None)
    lists = read_lists(args.run / done["lists"] / "lists.jsonl", ds.corpus, ds.queries)
    overrides = {**done["overrides"], "max_steps": args.skip + args.steps, "eval_every": 0, "heldout_eval_lists": 0}
    cfg = load_config(None, overrides)
    retriever, reranker = load_models(cfg, done["retriever"], done["reranker"], ds.corpus)
    phases: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            phases[name] += time.perf_counter() - t

    # phase timers around the models' entry points (the trainer calls them; backward runs inside the callers)
    def timed(obj, attr: str, name: str):
        fn = getattr(obj, attr)

        def wrapper(*a, **k):
            with phase(name), torch.profiler.record_function(name):
                return fn(*a, **k)
        setattr(obj, attr, wrapper)

    timed(retriever, "embed_queries", "retriever forward")
    timed(retriever, "embed_passages", "retriever forward")
    timed(reranker, "score", "re-ranker forward")
    step_seconds, prof_box = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, ds.corpus, ds.queries, lists, Path(tmp), retriever, reranker, progress=False)
        trainer.heldout, trainer.validator = [], None  # diagnostics off: the step alone
        micro, optimizer_step = trainer.micro_step, trainer.optimizer_step
        state = {"t": None, "n": 0}

        def micro_step(*a, **k):
            if state["t"] is None:
                state["t"] = time.perf_counter()
            with phase("micro step (forward + backward)"):
                return micro(*a, **k)

        def opt_step(*a, **k):
            with phase("optimiser"), torch.profiler.record_function("optimiser"):
                out = optimizer_step(*a, **k)
            state["n"] += 1
            step_seconds.append(time.perf_counter() - state["t"])
            state["t"] = None
            if state["n"] == args.skip:  # the profiled steps start here
                phases.clear()
                prof_box["p"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                prof_box["p"].__enter__()
            return out

        trainer.micro_step, trainer.optimizer_step = micro_step, opt_step
        trainer.train()
        prof = prof_box["p"]
        prof.__exit__(None, None, None)
    profiled = step_seconds[args.skip:]
    per_step = sum(profiled) / len(profiled)
    events = [e for e in prof.key_averages() if not e.key.startswith(("retriever", "re-ranker", "optimiser"))]
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in MATMUL))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
    fwd = phases["retriever forward"] + phases["re-ranker forward"]
    result = {
        "run": str(args.run), "threads": torch.get_num_threads(), "precision": cfg.precision,
        "shape": {k: overrides[k] for k in ("batch_size", "list_size", "passage_max_length", "reranker_max_length",
                                            "chunk_size", "reranker_micro_lists")},
        "seconds_per_step": per_step, "steps_profiled": len(profiled), "step_seconds": step_seconds,
        "phases_per_step": {k: v / len(profiled) for k, v in phases.items()},
        "backward_and_rest_per_step": (phases["micro step (forward + backward)"] - fwd) / len(profiled),
        "matmul_share_of_op_time": mm / total if total else None,
        "top_ops": [{"op": e.key, "self_cpu_s_per_step": e.self_cpu_time_total / 1e6 / len(profiled),
                     "share": e.self_cpu_time_total / total, "calls_per_step": e.count / len(profiled)}
                    for e in top],
    }
    print(f"{per_step:.2f} s a step over {len(profiled)} profiled steps ({torch.get_num_threads()} threads, "
          f"precision {cfg.precision}); shape {result['shape']}")
    for k, v in result["phases_per_step"].items():
        print(f"  {k:34s} {v:6.2f} s ({100 * v / per_step:4.1f}%)")
    print(f"  {'backward and the rest (in the micro step)':34s} {result['backward_and_rest_per_step']:6.2f} s")
    print(f"matrix multiplication: {100 * result['matmul_share_of_op_time']:.1f}% of the ops' self time")
    for t in result["top_ops"]:
        print(f"  {t['op']:45s} {t['self_cpu_s_per_step']:6.2f} s/step ({100 * t['share']:4.1f}%), "
              f"{t['calls_per_step']:.0f} calls")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
