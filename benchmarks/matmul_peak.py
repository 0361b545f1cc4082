"""The machine's matmul throughput with torch (GFLOP/s), the yardstick for encoding and training throughput.

    python benchmarks/matmul_peak.py                 # fp32
    python benchmarks/matmul_peak.py --dtype bf16    # bf16 (AMX / AVX-512 BF16 where the CPU has them)
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[ap.parse_args().dtype]
    out = {}
    for n in (384, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps = max(3, int(2e10 / (2 * n**3)))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = time.perf_counter() - t0
        out[f"{n}x{n}"] = 2 * n**3 * reps / dt / 1e9
    # the shape of a MiniLM FFN matmul: (tokens, 384) @ (384, 1536)
    x, w = torch.randn(4096, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
    for _ in range(3):
        x @ w
    t0 = time.perf_counter()
    for _ in range(20):
        x @ w
    out["4096x384x1536"] = 2 * 4096 * 384 * 1536 * 20 / (time.perf_counter() - t0) / 1e9
    print(json.dumps({"benchmark": "matmul_peak", "dtype": str(dtype).removeprefix("torch."),
                      "threads": torch.get_num_threads(), "gflops": out}, indent=2))


if __name__ == "__main__":
    main()
