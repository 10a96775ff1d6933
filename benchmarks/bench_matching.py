"""Benchmark of the matching engine (ProfileRecommender + recommend, top-50) on synthetic data.

Compares, on the same users, item vectors and histories:
  engine  profiles x items in tiles (vlm4rec.matching.TILE_BYTES of scores), seen items masked and the
          candidates merged into a running top-K per tile, near-ties rescored exactly (vlm4rec.selection)
  loop    the reference code's per-user loop: mean profile, sklearn cosine_similarity against every
          item, full argsort, seen items dropped (timed on a user sample, extrapolated)
  faiss   exact inner-product search (IndexFlatIP) for k + longest history, seen items filtered after
and measures the machine's float32 matmul peak in the same run, so the engine's scoring GFLOP/s can be
read against it. Per size it prints where the engine's time goes (profiles, scoring, masking, selection,
the exact ordering), the ratios to faiss and to the peak, and the engine's peak numpy memory on a fixed
sample of users (the 10^6-item case is timed on a user sample and extrapolated).
Run: ``python benchmarks/bench_matching.py [--quick]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp
from sklearn.metrics.pairwise import cosine_similarity
from threadpoolctl import threadpool_info

from vlm4rec.matching import TILE_BYTES, PhaseClock, ProfileRecommender, recommend, user_profiles
from vlm4rec.splits import History

K = 50
DIM = 384
MEMORY_USERS = 512  # peak memory is measured ranking this many users, whatever the catalogue
PHASES = ("scoring", "masking", "selection", "ordering")


@dataclass
class Case:
    name: str
    n_users: int
    n_items: int
    timed_users: int   # engine and faiss run on this many users (all of them when == n_users)
    loop_users: int    # the per-user loop runs on this sample and is extrapolated
    repeats: int       # engine and faiss: best of this many runs (the machine is shared)


def synthetic_history(n_users: int, n_items: int, rng: np.random.Generator) -> History:
    """Histories of 5..500 items (log-normal lengths, median ~60), items drawn uniformly."""
    lengths = np.clip(rng.lognormal(np.log(60), 0.9, n_users).astype(np.int64), 5, 500)
    rows = np.repeat(np.arange(n_users), lengths)
    cols = np.concatenate([rng.choice(n_items, n, replace=False) for n in lengths])
    ranks = np.concatenate([np.arange(n, 0, -1) for n in lengths]).astype(np.float32)
    shape = (n_users, n_items)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    return History(matrix=matrix, recency=sp.csr_matrix((ranks, (rows, cols)), shape=shape))


def matmul_peak_gflops(size: int = 4096, repeats: int = 3) -> float:
    """Best float32 GEMM rate of numpy's BLAS on a square problem."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    best = min(_timed(lambda: np.matmul(a, b, out=out))[1] for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run_engine(model: ProfileRecommender, users: np.ndarray, seen: sp.csr_matrix,
               block_size: int) -> tuple[np.ndarray, float, PhaseClock]:
    """(top-K, recommend seconds, seconds per engine phase) of a fitted model."""
    clock = PhaseClock()
    topk, recommend_s = _timed(lambda: recommend(model, users, seen, K, block_size, clock=clock))
    return topk, recommend_s, clock


def engine_peak_memory(model: ProfileRecommender, users: np.ndarray, seen: sp.csr_matrix, block_size: int) -> int:
    """Peak bytes numpy allocates during recommend (tracemalloc), model fitted beforehand."""
    tracemalloc.start()
    recommend(model, users, seen, K, block_size)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def run_loop(vectors: np.ndarray, history: History, users: np.ndarray) -> tuple[np.ndarray, float]:
    """The reference code's matching: one user at a time, full similarity row, full argsort."""
    out = np.empty((len(users), K), dtype=np.int64)
    start = time.perf_counter()
    for row, user in enumerate(users):
        seen = history.matrix[user].indices
        profile = vectors[seen].mean(axis=0, keepdims=True)
        sims = cosine_similarity(profile, vectors)[0]
        sims[seen] = -np.inf
        out[row] = np.argsort(-sims, kind="stable")[:K]
    return out, time.perf_counter() - start


def seen_mask(found: np.ndarray, users: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """Boolean (len(users), depth): whether found[r, j] is in the history of users[r]."""
    n_items = seen.shape[1]
    coo = seen[users].tocoo()
    seen_keys = coo.row.astype(np.int64) * n_items + coo.col
    return np.isin(np.arange(len(users))[:, None] * n_items + found, seen_keys)


def run_faiss(items: np.ndarray, history: History, users: np.ndarray,
              block_size: int) -> tuple[np.ndarray, float]:
    """Exact IndexFlatIP search of unit ``items`` for K + the longest history, then drop seen items, keep K."""
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    depth = K + int(np.diff(history.matrix.indptr)[users].max())
    out = np.empty((len(users), K), dtype=np.int64)
    start = time.perf_counter()
    for lo in range(0, len(users), block_size):
        block = users[lo:lo + block_size]
        _, found = index.search(user_profiles(history.matrix[block], items), depth)
        unseen_first = np.argsort(seen_mask(found, block, history.matrix), axis=1, kind="stable")
        out[lo:lo + len(block)] = np.take_along_axis(found, unseen_first[:, :K], axis=1)
    return out, time.perf_counter() - start


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of items two top-K lists of the same users have in common."""
    return float(np.mean([len(np.intersect1d(x, y)) / K for x, y in zip(a, b)]))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    blas = [(i["internal_api"], i["version"], i.get("architecture"), i["num_threads"])
            for i in threadpool_info() if i["user_api"] == "blas"]
    return (f"nproc={os.cpu_count()} cpu={cpu!r} numpy BLAS={blas} faiss={faiss.__version__} "
            f"omp_threads={faiss.omp_get_max_threads()} "
            f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")


def bench_case(case: Case, block_size: int, peak: float, rng: np.random.Generator) -> None:
    vectors = rng.standard_normal((case.n_items, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # sentence encoders emit unit vectors
    history = synthetic_history(case.n_users, case.n_items, rng)
    users = np.arange(case.timed_users)
    model, fit_s = _timed(lambda: ProfileRecommender(vectors).fit(history))
    engine_topk, recommend_s, clock = min((run_engine(model, users, history.matrix, block_size)
                                           for _ in range(case.repeats)), key=lambda r: r[1])
    memory = engine_peak_memory(model, np.arange(MEMORY_USERS), history.matrix, block_size)
    del model  # its normalised copy of the items; faiss holds its own
    # the fit builds every user's profile; the timed users carry their share of it
    profiles_s = fit_s * case.timed_users / case.n_users
    engine_s = recommend_s + profiles_s
    loop_sample = rng.choice(case.timed_users, case.loop_users, replace=False)
    loop_topk, loop_s = run_loop(vectors, history, loop_sample)
    faiss_topk, faiss_s = min((run_faiss(vectors, history, users, block_size)
                               for _ in range(case.repeats)), key=lambda r: r[1])

    engine_ups, loop_ups, faiss_ups = case.timed_users / engine_s, case.loop_users / loop_s, case.timed_users / faiss_s
    flops = 2.0 * case.timed_users * case.n_items * DIM
    phases = {"profiles": profiles_s, **{phase: clock.seconds.get(phase, 0.0) for phase in PHASES}}
    phases["other"] = engine_s - sum(phases.values())
    score_s = phases["scoring"]
    print(f"\n== {case.name}: {case.n_users} users x {case.n_items} items x {DIM}-d, k={K}, "
          f"block_size={block_size}, tile {TILE_BYTES // 2 ** 20} MiB")
    if case.timed_users < case.n_users:
        print(f"   engine and faiss timed on the first {case.timed_users} users; full-run time extrapolated")
    print(f"   loop timed on {case.loop_users} sampled users, extrapolated")
    print(f"   engine : {engine_ups:10.0f} users/s  ({engine_s:.2f} s, best of {case.repeats})  full run "
          f"~{fit_s + case.n_users / case.timed_users * recommend_s:.1f} s (fit for all users {fit_s:.2f} s)")
    print("            where the time goes: " + ", ".join(f"{name} {seconds:.2f} s ({seconds / engine_s:.0%})"
                                                       for name, seconds in phases.items()))
    print(f"   loop   : {loop_ups:10.1f} users/s  full run ~{case.n_users / loop_ups:.0f} s")
    print(f"   faiss  : {faiss_ups:10.0f} users/s  ({faiss_s:.2f} s incl. profiles; best of {case.repeats})")
    print(f"   engine/loop = {engine_ups / loop_ups:.0f}x   engine/faiss = {engine_ups / faiss_ups:.2f}x")
    print(f"   engine scoring {flops / score_s / 1e9:.1f} GFLOP/s = {flops / score_s / 1e9 / peak:.0%} of "
          f"matmul peak; end to end {flops / engine_s / 1e9:.1f} GFLOP/s = "
          f"{flops / engine_s / 1e9 / peak:.0%}")
    print(f"   engine peak numpy memory ranking {MEMORY_USERS} users: {memory / 2 ** 20:.0f} MiB (one tile "
          f"{TILE_BYTES / 2 ** 20:.0f} MiB; the untiled engine's score block of {block_size} users: "
          f"{block_size * case.n_items * 4 / 2 ** 20:.0f} MiB)")
    print(f"   agreement with loop {agreement(engine_topk[loop_sample], loop_topk):.3f}, "  # users = row
          f"with faiss {agreement(engine_topk, faiss_topk):.3f} (shared top-{K} items)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small user samples (smoke run)")
    parser.add_argument("--block-size", type=int, default=2048)
    args = parser.parse_args()
    print(machine())
    peak = matmul_peak_gflops()
    print(f"numpy float32 matmul peak (4096^3 sgemm, best of 3): {peak:.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    cases = [Case("ML-1M size", 6040, 3706, 6040, 100 if args.quick else 300, 3),
             Case("10^5 items", 100_000, 100_000, 2048 if args.quick else 8192, 5 if args.quick else 20, 1),
             Case("10^6 items", 100_000, 1_000_000, 512 if args.quick else 2048, 2 if args.quick else 5, 1)]
    for case in cases:
        bench_case(case, args.block_size, peak, rng)


if __name__ == "__main__":
    main()
