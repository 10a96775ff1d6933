"""The Ray executor against the local one on this machine: grounding all posters and matching at ML-1M size.

Grounding: every MovieLens-1M poster with the offline tagger (prompt arm ``image_only``), each run from an
empty throwaway cache in a temporary folder. ``local`` is ``ground_items`` with one tagger in this process
(torch on every core); ``ray, N actors`` is the same call with a ``RayDescriber`` whose N actors get one
CPU each (torch on one thread each; ``local, torch on 1 thread`` is the same work in this process, which
separates Ray's own cost from the thread count). Each time runs from the call to the result and includes
building the models (the local tagger; the Ray identity probe and the actors); the cluster is started once
before (its start is printed apart). The runs take turns, ``--repeats`` rounds, and the best time of each
counts (the machine may be shared).

Matching: synthetic unit-norm 384-d item vectors and histories (as ``bench_matching.py``), mean profiles,
top-50 with seen items excluded: ``recommend`` against ``recommend_ray`` (one task per block of users,
model in the object store), best of 3 x ``--repeats`` calls taking turns. The first Ray call starts its task
workers (printed apart); the calls after it find them warm, as in a stage that ranks many candidates one
after another. Every result is checked against the local one.

    python benchmarks/bench_ray.py [--posters ../shared/data/ml-1m/posters] [--users 6040 --items 3883]
                                   [--repeats 2] [--skip-grounding] [--json out.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from bench_all_posters import DEFAULT_POSTERS, poster_table
from bench_matching import DIM, K, synthetic_history
from vlm4rec.config import RayParams, load_params
from vlm4rec.distributed.grounding import GrounderSpec, RayDescriber
from vlm4rec.distributed.matching import recommend_ray
from vlm4rec.grounding import DescriptionCache, Grounder, build_grounder, ground_items
from vlm4rec.grounding.runner import Describer
from vlm4rec.matching import ProfileRecommender, recommend

#: A local cluster, one CPU and no GPU per actor or task, two actors; each measurement changes one key.
LOCAL = RayParams(address=None, num_cpus=1.0, num_gpus=0.0, actors=2, pin_servers=False)
TAGGER = load_params().ground.tagger  # the study's tagger settings


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def ground_once(items: pd.DataFrame, make: Callable[[], Grounder | Describer]) -> tuple[pd.DataFrame, float]:
    """Descriptions and wall seconds of one grounding run (models built inside the timing) from an empty cache."""
    with tempfile.TemporaryDirectory() as tmp, DescriptionCache(Path(tmp) / "cache.sqlite") as cache:
        result, seconds = timed(lambda: ground_items(items, make(), cache, "image_only", progress=False))
    return result.table, seconds


def single_threaded_tagger() -> Grounder:
    """The tagger with torch on one thread, as in a Ray actor with one CPU (isolates Ray's own cost)."""
    torch.set_num_threads(1)
    return build_grounder(TAGGER)


def bench_grounding(items: pd.DataFrame, repeats: int) -> list[dict[str, Any]]:
    """Best of ``repeats`` rounds; each round runs every variant in turn (the machine may be shared)."""
    runs: dict[str, Callable[[], Grounder | Describer]] = {
        "local (1 process, torch on every core)": lambda: build_grounder(TAGGER),
        "local, torch on 1 thread": single_threaded_tagger,
        **{f"ray, {n} actor{'s' * (n > 1)} x 1 CPU": functools.partial(
            RayDescriber, GrounderSpec(TAGGER), LOCAL.model_copy(update={"actors": n})) for n in (1, 2)}}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    reference, threads = None, torch.get_num_threads()
    for _ in range(repeats):
        for name, make in runs.items():
            torch.set_num_threads(threads)
            table, took = ground_once(items, make)
            if reference is None:
                reference = table
            pd.testing.assert_frame_equal(table, reference)
            seconds[name].append(took)
    local_s = min(next(iter(seconds.values())))
    return [{"run": name, "seconds": round(min(times), 1), "all_s": [round(t, 1) for t in times],
             "images_per_s": round(len(items) / min(times), 1), "vs_local": round(min(times) / local_s, 3)}
            for name, times in seconds.items()]


def bench_matching(n_users: int, n_items: int, block_sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Best of ``repeats`` warm calls per engine and block size, plus the very first Ray call (cold workers)."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n_items, DIM), dtype=np.float32)
    history = synthetic_history(n_users, n_items, rng)
    model = ProfileRecommender(vectors).fit(history)
    users = np.arange(n_users)
    expected = recommend(model, users, history.matrix, K, block_sizes[0])
    _, first_s = timed(lambda: recommend_ray(model, users, history.matrix, K, block_sizes[0], LOCAL))
    rows = [(f"ray, block {block_sizes[0]}, tasks of 1 CPU, first call (workers start)", block_sizes[0], first_s)]
    local_s = {}
    for block in block_sizes:
        runs: dict[str, Callable[[], np.ndarray]] = {
            "local": functools.partial(recommend, model, users, history.matrix, K, block),
            **{f"ray, tasks of {cpus} CPU": functools.partial(
                recommend_ray, model, users, history.matrix, K, block, LOCAL.model_copy(update={"num_cpus": cpus}))
                for cpus in (1, 2)}}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                got, took = timed(run)
                np.testing.assert_array_equal(got, expected)
                seconds[name].append(took)
        local_s[block] = min(seconds["local"])
        rows += [(f"{name}, block {block}", block, min(times)) for name, times in seconds.items()]
    return [{"run": name, "seconds": round(took, 3), "users_per_s": round(n_users / took),
             "vs_local": round(took / local_s[block], 2)} for name, block, took in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posters", type=Path, default=DEFAULT_POSTERS)
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3883)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[2048, 1024])
    parser.add_argument("--repeats", type=int, default=2, help="grounding rounds (matching: 3x this)")
    parser.add_argument("--skip-grounding", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_before": round(os.getloadavg()[0], 2)}
    _, ray_start_s = timed(lambda: ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False))
    report["ray_start_s"] = round(ray_start_s, 1)
    if not args.skip_grounding:
        items = poster_table(args.posters)
        if items.empty:
            raise SystemExit(f"no posters (*.jpg) in {args.posters}; pass --posters")
        report["grounding"] = {"posters": len(items), "runs": bench_grounding(items, args.repeats)}
    report["matching"] = {"users": args.users, "items": args.items, "dim": DIM, "k": K,
                          "runs": bench_matching(args.users, args.items, args.block_sizes, 3 * args.repeats)}
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    ray.shutdown()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
