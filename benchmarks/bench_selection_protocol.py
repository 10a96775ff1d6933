"""The selection protocol, measured: refit on train + validation (the study's default) against MMRec's best
checkpoint of the train-only run, on the graph cells of a finished study.

For each cell of ``--cells`` (default: every cell of params.yaml ``graph.cells``) it runs the cell as the graph
stage does (same grid, regime and seeds) with ``graph.selection: best_checkpoint``: per seed, the train-only run
early-stopped on validation, tested at its best check. It reads the refit results the graph stage saved
(``data/results/graph/<cell>/<cell>@seed<s>``), so it must run in a study folder after ``dvc repro``. It prints,
per cell, the test NDCG@10 of both protocols (mean and sd over seeds), their paired difference per seed and
the best epochs, and writes every seed's numbers to ``--out`` (JSON), rewritten after each cell.

  python benchmarks/bench_selection_protocol.py --out benchmarks/results_selection_protocol.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench_regimes import write_atomically  # the script's folder is on sys.path
from vlm4rec.config import load_params
from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import EvalData, MethodKey, load_result, select_and_test_seeds
from vlm4rec.multimodal import candidates, regime_options
from vlm4rec.representations import load_vectors

METRIC = "ndcg@10"


def spread(values: list[float]) -> str:
    """Mean and sample sd over seeds, e.g. ``0.0731 +- 0.0008``."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def measure_cell(cell: str, data: EvalData, embeddings: Path, results: Path) -> dict[str, Any]:
    """Both protocols' test metric per seed of one graph cell (best checkpoint run now, refit read back)."""
    params = load_params()
    graph, evaluation = params.graph, params.eval
    spec, scale = graph.cells[cell], graph.chosen_scale
    modalities = {name: load_vectors(embeddings, name, f"graph.cells.{cell}.modalities") for name in spec.modalities}
    fixed, grid = regime_options(graph, spec.model), scale.grids[spec.model]
    started = time.perf_counter()
    checkpoint = select_and_test_seeds(cell, lambda seed: candidates(spec.model, modalities, grid, fixed, seed),
                                       data, scale.seeds, evaluation.ks, evaluation.select_metric, refit=False)
    seconds = time.perf_counter() - started
    seeds = []
    for seed in scale.seeds:
        key = MethodKey(cell, seed)
        refit = load_result(results / cell / key.name)
        seeds.append({"seed": seed, "refit": refit.test_summary()[METRIC], "refit_epochs": refit.config["epochs"],
                      "best_checkpoint": checkpoint[key].test_summary()[METRIC],
                      "best_checkpoint_epochs": checkpoint[key].config["epochs"]})
    return {"cell": cell, "model": spec.model, "seeds": seeds, "seconds": round(seconds, 1)}


def summary_line(entry: dict[str, Any]) -> str:
    """One printed row: both protocols over seeds and their paired difference (checkpoint minus refit)."""
    refit = [s["refit"] for s in entry["seeds"]]
    checkpoint = [s["best_checkpoint"] for s in entry["seeds"]]
    difference = [c - r for c, r in zip(checkpoint, refit)]
    epochs = [s["best_checkpoint_epochs"] for s in entry["seeds"]]
    return (f"{entry['cell']:34s} refit {spread(refit)}  best checkpoint {spread(checkpoint)}  "
            f"difference {spread(difference)}  checkpoint epochs {epochs} ({entry['seconds']:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--embeddings", type=Path, default=Path("data/embeddings"))
    parser.add_argument("--results", type=Path, default=Path("data/results/graph"))
    parser.add_argument("--cells", nargs="*", help="graph cells (default: all of params.yaml graph.cells)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    data = EvalData.from_prepared(load_prepared(args.prepared),
                                  ranker(None, params.eval.device, params.eval.block_size))
    payload: dict[str, Any] = {"metric": METRIC, "regime": params.graph.regime, "scale": params.graph.scale,
                               "cells": []}
    for cell in args.cells or list(params.graph.cells):
        entry = measure_cell(cell, data, args.embeddings, args.results)
        payload["cells"].append(entry)
        write_atomically(args.out, payload)
        print(summary_line(entry), flush=True)


if __name__ == "__main__":
    main()
