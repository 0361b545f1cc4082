"""Two configs of the demo (or any recipe) compared system by system, paired over queries with seeds pooled.

    python benchmarks/compare_demos.py --a runs/old-s1 runs/old-s2 --b runs/new-s1 runs/new-s2
    python benchmarks/compare_demos.py --a runs/s1 runs/s2 --b runs/s1 runs/s2 --systems retriever-only joint-retriever

Runs of --a and --b are paired by position (the same seed). For every system both reports have, prints B - A
on validation (the queries both validated on) and on the reported split (mean nDCG@10 difference over (seed,
qid) pairs, paired randomisation p, wins / losses), the same for the system each run served (`(served)`); then
each run's wall time and training steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from demo_seeds import per_query  # benchmarks/ is on the path when a script here runs

SERVED = "(served)"  # the row of whichever system each run served


def _file(run: Path, row: dict, val: bool) -> Path | None:
    from tandem.recipe import val_file

    path = Path(row["run"])
    if not path.is_absolute() and not path.exists():  # (a run named relative to where the demo ran, or to its dir)
        path = next((p for p in (run.parent / path, run / path) if p.exists()), run / path)
    if val:
        path = path.with_name(val_file(path.name))
    return path if path.exists() else None


def _row(report: dict, system: str) -> dict:
    """A report's row of ``system``; ``served``: the row of the system it selected."""
    return report["systems"][report["selected"]["system"] if system == SERVED else system]


def _pairs(a_runs: list[Path], b_runs: list[Path], reports: dict[Path, dict], system: str, qrels,
           val_qrels, system_b: str | None = None) -> dict[str, dict]:
    """Per (seed, qid): A's ``system`` and B's ``system_b`` (default the same system), on test and validation."""
    out: dict[str, dict] = {"val": {}, "test": {}}
    for seed, (a, b) in enumerate(zip(a_runs, b_runs)):
        ra, rb = _row(reports[a], system), _row(reports[b], system_b or system)
        for split, q, val in (("test", qrels, False), ("val", val_qrels[seed], True)):
            fa, fb = _file(a, ra, val), _file(b, rb, val)
            if fa is None or fb is None or q is None:
                what = "validation" if val else "test"
                print(f"note: {system} of seed {seed + 1} has no {what} run in both: left out")
                continue
            pa, pb = per_query(str(fa), q), per_query(str(fb), q)
            for qid in q:
                out[split][(seed, qid)] = (pa.get(qid, 0.0), pb.get(qid, 0.0))
    return out


def main() -> None:
    from tandem.data import load_beir, resolve_dataset
    from tandem.eval.stats import paired_test
    from tandem.recipe import choose_validation, load_recipe, saved_settings

    ap = argparse.ArgumentParser()
    ap.add_argument("--a", nargs="+", required=True, help="runs of config A (one per seed)")
    ap.add_argument("--b", nargs="+", required=True, help="runs of config B (the same seeds, in the same order)")
    ap.add_argument("--systems", nargs=2, metavar=("SYSTEM_A", "SYSTEM_B"),
                    help="compare A's SYSTEM_A with B's SYSTEM_B only (--a and --b may name the same runs: "
                         "--systems retriever-only joint-retriever is the joint-vs-alone claim, seeds pooled)")
    args = ap.parse_args()
    a_runs, b_runs = [Path(r) for r in args.a], [Path(r) for r in args.b]
    reports = {r: json.loads((r / "report.json").read_text()) for r in a_runs + b_runs}
    first = reports[b_runs[0]]
    recipe = json.loads((b_runs[0] / "recipe.json").read_text())
    # (a run made elsewhere, e.g. in a removed worktree, is found again by its dataset's name)
    directory = resolve_dataset(recipe["data_dir"] if Path(recipe["data_dir"]).is_dir() else recipe["data"])
    train = load_beir(directory, recipe.get("train_split", "train"))
    test = load_beir(directory, first["split"], corpus=train.corpus)

    def validation(run: Path) -> dict:
        cfg = load_recipe(None, saved_settings(json.loads((run / "recipe.json").read_text())))
        return choose_validation(cfg, directory, train, first["split"]).qrels

    val_qrels = []  # the two configs may validate on different queries: compare on those both validated on
    for a, b in zip(a_runs, b_runs):
        qa, qb = validation(a), validation(b)
        val_qrels.append({q: d for q, d in qb.items() if q in qa} or None)
    systems = [s for s in first["systems"] if all(s in rep["systems"] for rep in reports.values())
               and not first["systems"][s].get("peer")] + [SERVED]
    if args.systems:
        systems = [tuple(args.systems)]
    print(f"B - A, nDCG@10, {len(b_runs)} seed(s) pooled (paired randomisation over (seed, query))\n")
    print("| system | A val | B val | B - A val (p) | A | B | B - A (p; wins / losses) |")
    print("|---|---|---|---|---|---|---|")
    for s in systems:
        sa, sb = s if isinstance(s, tuple) else (s, s)
        pairs = _pairs(a_runs, b_runs, reports, sa, test.qrels, val_qrels, sb)
        s = sa if sa == sb else f"{sb} (B) - {sa} (A)"
        cells = []
        for split in ("val", "test"):
            if not pairs[split]:
                cells.append(None)
                continue
            a = {k: x for k, (x, _) in pairs[split].items()}
            b = {k: y for k, (_, y) in pairs[split].items()}
            t = paired_test(b, a)
            cells.append((t["mean_b"], t["mean_a"], t))
        v, r = cells
        vtxt = (f"{v[0]:.4f} | {v[1]:.4f} | {v[2]['diff']:+.4f} ({v[2]['p']:.2g})" if v else "- | - | -")
        print(f"| {s} | {vtxt} | {r[0]:.4f} | {r[1]:.4f} | {r[2]['diff']:+.4f} ({r[2]['p']:.2g}; "
              f"{r[2]['wins']} / {r[2]['losses']}) |")
    print()
    for name, runs in (("A", a_runs), ("B", b_runs)):
        for r in runs:
            rep = reports[r]
            served = rep["selected"]["system"]
            print(f"{name} {r}: served {served} ({rep['systems'][served]['nDCG@10']:.4f}); "
                  f"{rep['wall_seconds']:.0f} s; steps {rep['sizing'].get('steps')}")


if __name__ == "__main__":
    main()
