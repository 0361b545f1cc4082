"""Peak memory of `tandem index` as the corpus grows: SciFact repeated 1x, 10x, 100x with new ids.

Each size is indexed by a fresh `tandem index` process whose peak RSS is read from the kernel
(``/usr/bin/time -v``'s "Maximum resident set size", via ``wait4``). To keep 100x SciFact (518k
passages) affordable on a 2-core CPU, the default encoder is the embedded MiniLM cut to its first
layer (``--layers 1``, the same tokenizer, embeddings and 384-dim output) at 32 tokens: memory is
a property of the pipeline (corpus, shards, index), not of the encoder's depth. The table splits
the peak into what must grow with the corpus (the passage texts held in memory, the 384-dim float32
vectors a flat index keeps) and the rest.

    python benchmarks/index_memory.py --scales 1 10 100 --out runs/index-memory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def shallow_model(out: Path, layers: int) -> Path:
    """The embedded MiniLM with only its first ``layers`` transformer layers (a real model directory)."""
    from transformers import AutoModel, AutoTokenizer

    from tandem.models.hf import resolve_model

    src = resolve_model(None)
    if (out / "config.json").exists():
        return out
    model = AutoModel.from_pretrained(src)
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    for extra in ("modules.json", "1_Pooling", "2_Normalize", "sentence_bert_config.json"):
        p = Path(src) / extra
        if p.is_dir():
            shutil.copytree(p, out / extra, dirs_exist_ok=True)
        elif p.exists():
            shutil.copy2(p, out / extra)
    return out


def repeated_corpus(src: Path, out: Path, times: int) -> tuple[int, int]:
    """``times`` copies of a BEIR corpus.jsonl with ids made unique; returns (passages, text bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    text_bytes = sum(len((r.get("title", "") + " " + r["text"]).encode()) for r in rows) * times
    target = out / "corpus.jsonl"
    if not target.exists():
        tmp = out / "corpus.jsonl.tmp"
        with open(tmp, "w") as f:
            for k in range(times):
                for r in rows:
                    f.write(json.dumps({**r, "_id": f"{r['_id']}-{k}"}) + "\n")
        os.replace(tmp, target)
    return len(rows) * times, text_bytes


def peak_rss_run(cmd: list[str]) -> tuple[int, float, str]:
    """Run ``cmd``; return (peak RSS bytes of the process tree's largest process, seconds, stderr tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0, err[-300:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("TANDEM_DATA", "../shared/data"), "scifact"))
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--layers", type=int, default=1, help="encoder layers kept (0: the whole default model)")
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--index-type", default="flat")
    ap.add_argument("--shard-size", type=int, default=50_000)
    ap.add_argument("--out", default="runs/index-memory")
    args = ap.parse_args()

    out = Path(args.out)
    model = str(shallow_model(out / f"model-{args.layers}l", args.layers)) if args.layers else None
    rows = []
    for times in args.scales:
        d = out / f"x{times}"
        n, text_bytes = repeated_corpus(Path(args.data) / "corpus.jsonl", d, times)
        shutil.rmtree(d / "index", ignore_errors=True)
        cmd = [sys.executable, "-m", "tandem", "index", "--data", str(d), "--out", str(d / "index"),
               "--max-length", str(args.max_length), "--index-type", args.index_type, "--embeddings", "none",
               "--shard-size", str(args.shard_size), "--no-progress"]
        if model:
            cmd += ["--model", model]
        rss, secs, tail = peak_rss_run(cmd)
        vec_bytes = n * 384 * 4
        row = {"scale": times, "passages": n, "peak_rss_bytes": rss, "seconds": secs, "passages_per_s": n / secs,
               "text_bytes": text_bytes, "vector_bytes": vec_bytes, "rest_bytes": rss - text_bytes - vec_bytes}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(d / "index", ignore_errors=True)
    mib = 1 / 2**20
    print("\n| corpus | passages | peak RSS MiB | texts MiB | vectors MiB | rest MiB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| SciFact x{r['scale']} | {r['passages']:,} | {r['peak_rss_bytes'] * mib:,.0f} | "
              f"{r['text_bytes'] * mib:,.0f} | {r['vector_bytes'] * mib:,.0f} | {r['rest_bytes'] * mib:,.0f} | "
              f"{r['seconds']:.0f} |")
    (out / "result.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
