"""Peak memory of `tandem index` as the corpus grows: SciFact repeated 1x, 10x, 100x with new ids.

Each size is indexed by a fresh `tandem index` process whose peak RSS is read from the kernel
(``/usr/bin/time -v``'s "Maximum resident set size", via ``wait4``). To keep 100x SciFact (518k
passages) affordable on a 2-core CPU, the default encoder is the embedded MiniLM cut to its first
``--layers`` transformer layers (default 1; 0 keeps only the embeddings and pooling; the same
tokenizer and 384-dim output; ``--full-model`` for all six) at 32 tokens: memory is a property of
the pipeline (corpus, shards, index), not of the encoder's depth. The table gives, per index type,
the peak, the passage texts and the 384-dim float32 vectors (what a flat index must hold), and the
growth per passage against the smallest scale.

    python benchmarks/index_memory.py --scales 1 10 100 --index-types flat ivfpq --layers 0

``--trace SCALE`` instead builds one index in this process and prints the resident memory after each
shard is encoded and after the index is built: a bounded build stays flat from shard to shard.

    python benchmarks/index_memory.py --trace 10 --layers 0 --shard-size 5000
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
    ap.add_argument("--layers", type=int, default=1, help="transformer layers of the default model kept (0: none)")
    ap.add_argument("--full-model", action="store_true", help="the whole default model instead")
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--index-types", nargs="+", default=["flat"], choices=["flat", "hnsw", "ivfpq"])
    ap.add_argument("--shard-size", type=int, default=50_000)
    ap.add_argument("--out", default="runs/index-memory")
    ap.add_argument("--trace", type=int, default=0, help="trace one build of this scale in-process instead")
    args = ap.parse_args()
    if args.trace:
        return trace(args)

    out = Path(args.out)
    model = None if args.full_model else str(shallow_model(out / f"model-{args.layers}l", args.layers))
    rows = []
    for times in args.scales:
        d = out / f"x{times}"
        n, text_bytes = repeated_corpus(Path(args.data) / "corpus.jsonl", d, times)
        for kind in args.index_types:
            shutil.rmtree(d / "index", ignore_errors=True)
            cmd = [sys.executable, "-m", "tandem", "index", "--data", str(d), "--out", str(d / "index"),
                   "--max-length", str(args.max_length), "--index-type", kind, "--embeddings", "none",
                   "--shard-size", str(args.shard_size), "--no-progress"]
            if model:
                cmd += ["--model", model]
            rss, secs, tail = peak_rss_run(cmd)
            vec_bytes = n * 384 * 4
            row = {"scale": times, "index_type": kind, "passages": n, "peak_rss_bytes": rss, "seconds": secs,
                   "passages_per_s": n / secs, "text_bytes": text_bytes, "vector_bytes": vec_bytes,
                   "rest_bytes": rss - text_bytes - vec_bytes}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(d / "index", ignore_errors=True)
    mib = 1 / 2**20
    print("\n| index | corpus | passages | peak RSS MiB | texts MiB | vectors MiB | growth per passage vs the "
          "smallest | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["index_type"] == r["index_type"])
        growth = ((r["peak_rss_bytes"] - base["peak_rss_bytes"]) / (r["passages"] - base["passages"])
                  if r["passages"] > base["passages"] else float("nan"))
        print(f"| {r['index_type']} | SciFact x{r['scale']} | {r['passages']:,} | {r['peak_rss_bytes'] * mib:,.0f} | "
              f"{r['text_bytes'] * mib:,.0f} | {r['vector_bytes'] * mib:,.0f} | {growth:,.0f} B | {r['seconds']:.0f} |")
    (out / "result.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


def _rss_mib() -> tuple[int, int]:
    """(current, peak) resident memory of this process in MiB."""
    d = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))}
    return d["VmRSS"] // 1024, d["VmHWM"] // 1024


def trace(args) -> None:
    """Build one index in-process, printing resident memory after every shard and at the end."""
    from tandem.index.dense import build_index
    from tandem.models.encoder import Encoder

    out = Path(args.out)
    model = None if args.full_model else str(shallow_model(out / f"model-{args.layers}l", args.layers))
    d = out / f"x{args.trace}"
    n, _ = repeated_corpus(Path(args.data) / "corpus.jsonl", d, args.trace)
    enc = Encoder.from_pretrained(model, max_length=args.max_length)
    rows = [("model loaded", 0, *_rss_mib())]
    real, done = enc.encode, [0, 0]  # passages and shards of the current build

    def encode(texts, **kw):
        vecs = real(texts, **kw)
        done[0] += len(texts)
        done[1] += 1
        rows.append((f"shard {done[1]}", done[0], *_rss_mib()))
        return vecs

    enc.encode = encode
    shutil.rmtree(d / "trace-index", ignore_errors=True)
    for kind in args.index_types:
        build_index(d / "corpus.jsonl", d / "trace-index", enc, index_type=kind, shard_size=args.shard_size,
                    embeddings_dtype=None)
        rows.append((f"{kind} index built", done[0], *_rss_mib()))
        shutil.rmtree(d / "trace-index", ignore_errors=True)
        done[:] = [0, 0]
    print(f"\nSciFact x{args.trace} ({n:,} passages), shards of {args.shard_size:,}\n")
    print("| after | passages encoded | RSS MiB | peak RSS MiB |\n|---|---|---|---|")
    for name, k, cur, peak in rows:
        print(f"| {name} | {k:,} | {cur:,} | {peak:,} |")


if __name__ == "__main__":
    main()
