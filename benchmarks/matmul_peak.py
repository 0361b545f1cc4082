"""The machine's fp32 matmul throughput with torch (GFLOP/s), the yardstick for training throughput.

    python benchmarks/matmul_peak.py
"""

from __future__ import annotations

import json
import time

import torch


def main() -> None:
    out = {}
    for n in (384, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        reps = max(3, int(2e10 / (2 * n**3)))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = time.perf_counter() - t0
        out[f"{n}x{n}"] = 2 * n**3 * reps / dt / 1e9
    # the shape of a MiniLM FFN matmul: (tokens, 384) @ (384, 1536)
    x, w = torch.randn(4096, 384), torch.randn(384, 1536)
    for _ in range(3):
        x @ w
    t0 = time.perf_counter()
    for _ in range(20):
        x @ w
    out["4096x384x1536"] = 2 * 4096 * 384 * 1536 * 20 / (time.perf_counter() - t0) / 1e9
    print(json.dumps({"benchmark": "matmul_peak", "threads": torch.get_num_threads(), "gflops": out}, indent=2))


if __name__ == "__main__":
    main()
