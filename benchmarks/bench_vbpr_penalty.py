"""VBPR's penalty and user split on ML-1M validation: the default (batch penalty on the scoring vectors, dim
split in half) against the paper's penalty (lambda_Theta on the batch's ID parameters, lambda_E on E and beta')
and MMRec's 64 + 64 user dimensions, in the fast regime with the study's early stopping (a check every 4
epochs, patience 2), ``title`` + ``image`` as the cell ``vbpr-title-image``. Writes every run's raw validation
checks (NDCG@10 at epochs 0, 4, 8, ...) to ``benchmarks/results_vbpr_penalty.json`` and prints, per
configuration, the best check and the settled level (the mean of the last 1 + patience checks: the run's
last patience window and the check before it) over the seeds.

    python benchmarks/bench_vbpr_penalty.py --prepared data/prepared --embeddings data/embeddings
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_graph_models import load_data
from vlm4rec.evaluation import validation_monitor
from vlm4rec.multimodal import VBPR
from vlm4rec.training import TrainingOptions

EVAL_EVERY, PATIENCE = 4, 2
RESULTS = Path(__file__).with_name("results_vbpr_penalty.json")
#: (settings, seeds): the default and the paper penalty's best point on three seeds, the rest on seed 0
CONFIGS: list[tuple[dict, tuple[int, ...]]] = [
    ({"penalty": "batch", "l2": 1e-2}, (0, 1, 2)),
    ({"penalty": "paper", "l2": 1e-2, "l2_content": 1e-3}, (0, 1, 2)),
    ({"penalty": "paper", "l2": 1e-2, "l2_content": 0.0}, (0,)),
    ({"penalty": "paper", "l2": 1e-1, "l2_content": 0.0}, (0,)),
    ({"penalty": "paper", "l2": 1e-2, "l2_content": 1e-2}, (0,)),
    ({"penalty": "paper", "l2": 1e-3, "l2_content": 1e-3}, (0,)),
    ({"penalty": "batch", "l2": 1e-2, "split": "each"}, (0,)),
]


def run(settings: dict, seed: int, data, modalities) -> dict:
    """One monitored fit; its raw checks, best check and settled level."""
    monitor = validation_monitor(data.validation(), [10], "ndcg@10")
    start = time.perf_counter()
    log = VBPR(modalities, epochs=60, eval_every=EVAL_EVERY, patience=PATIENCE, options=TrainingOptions(seed=seed),
               **settings).fit_monitored(data.train_history, monitor)
    checks = [float(v) for v in log.values]
    return {"settings": settings, "seed": seed, "checks": checks, "best": max(checks), "best_epoch": log.best_epoch,
            "settled": float(np.mean(checks[-PATIENCE - 1:])), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--embeddings", required=True)
    args = parser.parse_args()
    data, modalities = load_data(argparse.Namespace(prepared=args.prepared, embeddings=args.embeddings,
                                                    text="title", image="image"))
    runs = []
    for settings, seeds in CONFIGS:
        for seed in seeds:
            runs.append(run(settings, seed, data, modalities))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "checks"}), flush=True)
    RESULTS.write_text(json.dumps(runs, indent=1) + "\n")
    print("\nconfiguration | seeds | best check (mean +- sd) | settled (mean +- sd)")
    for settings, seeds in CONFIGS:
        mine = [r for r in runs if r["settings"] == settings]
        best, settled = np.array([r["best"] for r in mine]), np.array([r["settled"] for r in mine])
        spread = (lambda x: f"{x.mean():.4f} +- {x.std(ddof=1):.4f}" if len(x) > 1 else f"{x[0]:.4f}")
        print(f"{json.dumps(settings)} | {len(mine)} | {spread(best)} | {spread(settled)}")


if __name__ == "__main__":
    main()
