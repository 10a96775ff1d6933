"""The report's statistics at the study's size, with synthetic per-user values: how long the main table, the
paired-test table and the findings' paired comparisons take with eval.bootstrap_resamples, and how that scales.

The shape follows the default ML-1M study (issue 24: the report stage stays about a minute on an idle 2-core
machine with 10,000 resamples): 6,034 test users, 14 unseeded families, 11 families with 3 seeds, chance; the
main table on 6 metrics, the paired tests against 3 references on 2 metrics, 15 two-arm findings. Values are
drawn at random (the bootstrap's cost does not depend on them).

    python benchmarks/bench_bootstrap.py [--users 6034] [--resamples 1000 10000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from vlm4rec.stats import paired_tests, results_table

METRICS = ("recall@10", "ndcg@10", "hit_rate@10", "recall@20", "ndcg@20", "hit_rate@20")


def per_user_table(n_users: int, unseeded: int, seeded: int, seeds: int, rng: np.random.Generator) -> pd.DataFrame:
    """Long per-user table: ``unseeded`` families with one row per user, ``seeded`` families with ``seeds``."""
    users = np.arange(n_users)
    frames = []
    for family in range(unseeded + seeded):
        for seed in ([np.nan] if family < unseeded else range(seeds)):
            values = {metric: rng.random(n_users) for metric in METRICS}
            frames.append(pd.DataFrame({"method": f"m{family}", "seed": seed, "user_idx": users, **values}))
    return pd.concat(frames, ignore_index=True)


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=6034)
    parser.add_argument("--resamples", type=int, nargs="+", default=[1000, 10_000])
    args = parser.parse_args()
    per_user = per_user_table(args.users, 14, 11, 3, np.random.default_rng(0))
    pairs = [("m0", f"m{i}") for i in range(1, 16)]
    totals = []
    for resamples in args.resamples:
        main_s = timed(lambda: results_table(per_user, METRICS, resamples))
        paired_s = timed(lambda: [paired_tests(per_user, ref, metric, resamples) for ref in ("m0", "m1", "m2")
                                  for metric in ("ndcg@10", "recall@20")])
        findings_s = timed(lambda: [paired_tests(per_user[per_user["method"].isin(pair)], pair[1], "ndcg@10",
                                                 resamples) for pair in pairs])
        totals.append(main_s + paired_s + findings_s)
        print(f"{args.users:,} users, {resamples:,} resamples: main table {main_s:.1f} s, paired tests "
              f"{paired_s:.1f} s, 15 findings {findings_s:.1f} s, total {totals[-1]:.1f} s")
    if len(totals) > 1:
        print(f"{args.resamples[-1]:,} resamples cost {totals[-1] / totals[0]:.1f}x what {args.resamples[0]:,} do "
              f"({args.resamples[-1] / args.resamples[0]:.0f}x the resamples)")


if __name__ == "__main__":
    main()
