"""One-shot check of the torch matching engine on a GPU (``recommend_torch(device="cuda")``), prepared to run
unattended on a lent machine: on bench_matching's synthetic data (unit 384-d items, log-normal histories,
top-50) it measures the device's float32 matmul peak, times the engine per catalogue size and item tile, checks
that its lists equal the CPU engine's (``recommend``) on a user sample, and writes everything to a JSON file.

Run: ``python benchmarks/bench_matching_gpu.py --out gpu.json [--items 100000 1000000] [--users 8192]``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench_matching import DIM, K, synthetic_history
from vlm4rec.matching import PhaseClock, ProfileRecommender, recommend, recommend_torch


def device_matmul_peak(size: int = 8192, repeats: int = 5) -> float:
    """Best float32 GEMM rate on the GPU (GFLOP/s) under torch's current float32 matmul precision."""
    a, b = (torch.randn(size, size, device="cuda") for _ in range(2))
    a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def time_gpu(model: ProfileRecommender, users: np.ndarray, seen, block_size: int,
             tile_items: int) -> tuple[np.ndarray, float, dict[str, float]]:
    """(lists, seconds, seconds per phase) of recommend_torch on the GPU, after a warm-up on a few users."""
    recommend_torch(model, users[:256], seen, K, block_size, "cuda", tile_items)
    torch.cuda.synchronize()
    clock = PhaseClock()
    start = time.perf_counter()
    lists = recommend_torch(model, users, seen, K, block_size, "cuda", tile_items, clock)
    torch.cuda.synchronize()
    return lists, time.perf_counter() - start, clock.seconds


def bench_size(n_items: int, n_users: int, timed_users: int, check_users: int, tiles: list[int],
               block_size: int, peak: float, rng: np.random.Generator) -> dict:
    vectors = rng.standard_normal((n_items, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    history = synthetic_history(n_users, n_items, rng)
    model = ProfileRecommender(vectors).fit(history)
    users = np.arange(timed_users)
    start = time.perf_counter()
    cpu = recommend(model, users[:check_users], history.matrix, K, block_size)
    cpu_s = time.perf_counter() - start
    runs = []
    for tile_items in tiles:
        lists, seconds, phases = time_gpu(model, users, history.matrix, block_size, tile_items)
        gflops = 2.0 * timed_users * n_items * DIM / seconds / 1e9
        runs.append({"tile_items": tile_items, "seconds": seconds, "users_per_s": timed_users / seconds,
                     "gflops_end_to_end": gflops, "share_of_device_peak": gflops / peak,
                     "phases_s (scoring is asynchronous: its kernels finish inside selection)": phases,
                     "rows_equal_to_cpu": int((lists[:check_users] == cpu).all(axis=1).sum()),
                     "rows_checked": check_users})
        print(f"{n_items} items, tile {tile_items}: {timed_users / seconds:.0f} users/s, "
              f"{runs[-1]['rows_equal_to_cpu']}/{check_users} lists equal to the CPU engine's", flush=True)
    return {"n_users": n_users, "n_items": n_items, "timed_users": timed_users, "k": K, "dim": DIM,
            "cpu_users_per_s": check_users / cpu_s, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=8192, help="users timed on the GPU per size")
    parser.add_argument("--check-users", type=int, default=512, help="users whose lists the CPU engine also ranks")
    parser.add_argument("--tiles", type=int, nargs="+", default=[16384, 131072], help="items per tile to time")
    parser.add_argument("--block-size", type=int, default=2048)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_matching_gpu: no CUDA device visible to torch; this script times the GPU path")
    peak = device_matmul_peak()
    print(f"{torch.cuda.get_device_name()}: float32 matmul peak {peak:.0f} GFLOP/s "
          f"(precision {torch.get_float32_matmul_precision()})", flush=True)
    rng = np.random.default_rng(0)
    sizes = [bench_size(n_items, 100_000, args.users, args.check_users, args.tiles, args.block_size, peak, rng)
             for n_items in args.items]
    with open(args.out, "w") as out:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "float32_matmul_precision": torch.get_float32_matmul_precision(),
                   "device_matmul_peak_gflops": peak, "sizes": sizes}, out, indent=2)


if __name__ == "__main__":
    main()
