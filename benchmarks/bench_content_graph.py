"""Transductive against strictly inductive content graphs, measured once: FREEDOM's and SMORE's new-item forms
on the new-item protocol of params.yaml ``cold_start``.

In the transductive form (the stage's default, ``cold_start.content_graph: transductive``) the item-item kNN
graphs are built from every item's features, the new items' included; in the inductive form they are built
from the warm items only and each new item is inserted at scoring by its nearest warm items
(``vlm4rec.multimodal.graphs.knn_graph``'s ``warm``). For each cell of ``--cells`` both forms run as the
cold_start stage runs the cell (same grid, regime, seeds, selection on the validation new items), and the
script prints, per form, the test metric on the new items ranked among themselves (``cold``) and among all
items (``all``), mean and sd over seeds; on the cold setting, inductive minus transductive and each form minus
chance with the stage's two-way bootstrap CI and p (users and new items resampled, seeds as arms); and the
epochs chosen. Every seed's
numbers go to ``--out`` (JSON, rewritten after each cell). Run in a study folder after ``dvc repro`` (it reads
the prepared data and embeddings):

  python benchmarks/bench_content_graph.py --out benchmarks/results_content_graph.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench_regimes import measure_and_record  # the script's folder is on sys.path
from vlm4rec.cold_start import new_item_findings, select_and_test_new_items
from vlm4rec.config import load_params
from vlm4rec.evaluation import MethodKey, MethodResult
from vlm4rec.methods import ContentGraph
from vlm4rec.metrics import CHANCE
from vlm4rec.multimodal import candidates, new_item_options
from vlm4rec.pipeline.new_item_data import chance_references, new_item_data
from vlm4rec.pipeline.outputs import EMBEDDINGS_DIR
from vlm4rec.representations import load_vectors

FORMS: tuple[ContentGraph, ...] = ("transductive", "inductive")
SETTINGS = ("cold", "all")
COMPARISON_KEYS = ("method", "reference", "mean_method", "mean_reference", "mean_diff", "diff_ci_low",
                   "diff_ci_high", "p", "diff_ci_low_users", "diff_ci_high_users")


def spread(values: list[float]) -> str:
    """Mean and sample sd over seeds, e.g. ``0.1731 +- 0.0008``."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def measure_cell(cell: str, n_resamples: int) -> dict[str, Any]:
    """Both forms' test metric per seed and setting of one graph cell in its new-item form, and on the new items
    ranked among themselves (``cold``) inductive minus transductive and each form minus chance, with the
    stage's two-way bootstrap over users and new items (:func:`~vlm4rec.cold_start.new_item_findings`)."""
    params = load_params()
    graph, evaluation, cold_start = params.graph, params.eval, params.cold_start
    spec = graph.cells[cell]
    modalities = {name: load_vectors(EMBEDDINGS_DIR, name, f"graph.cells.{cell}.modalities")
                  for name in spec.modalities}
    grid = graph.chosen_scale.grids[spec.model]
    data, _ = new_item_data(cold_start, evaluation)
    forms: dict[str, Any] = {}
    cold: dict[MethodKey, MethodResult] = {}
    for form in FORMS:
        fixed, name = new_item_options(graph, spec.model, form), f"{cell}-{form}"
        started = time.perf_counter()
        results = select_and_test_new_items(
            name, lambda seed: candidates(spec.model, modalities, grid, fixed, seed), data, evaluation.ks,
            evaluation.select_metric, cold_start.seeds, sets=SETTINGS)
        cold |= results["cold"]
        forms[form] = {"seconds": round(time.perf_counter() - started, 1), "seeds": [
            {"seed": seed, "epochs": results["cold"][MethodKey(name, seed)].config["epochs"]}
            | {setting: results[setting][MethodKey(name, seed)].test_summary()[cold_start.metric]
               for setting in SETTINGS} for seed in cold_start.seeds]}
    chance = chance_references(data, evaluation.ks)["cold"]
    tests = {form: new_item_findings(cold, data.test_targets, f"{cell}-{form}", cold_start.metric, chance,
                                     n_resamples, evaluation.seed) for form in FORMS}
    comparisons = [row for form in FORMS for row in tests[form].to_dict("records")
                   if form == "inductive" or row["reference"] == CHANCE]
    return {"cell": cell, "model": spec.model, "metric": cold_start.metric, "variant": cold_start.variant,
            "chance_cold": chance.test_summary()[cold_start.metric], "forms": forms,
            "comparisons_cold": [{key: row[key] for key in COMPARISON_KEYS} for row in comparisons]}


def summary_lines(entry: dict[str, Any]) -> list[str]:
    """Per setting both forms over seeds; on the cold setting each comparison with its two-way CI and p."""
    lines = []
    for setting in SETTINGS:
        values = {form: [seed[setting] for seed in entry["forms"][form]["seeds"]] for form in FORMS}
        lines.append(f"{entry['cell']:28s} {setting:5s} {entry['metric']}: transductive "
                     f"{spread(values['transductive'])}, inductive {spread(values['inductive'])}")
    lines.append(f"{entry['cell']:28s} cold  chance {entry['chance_cold']:.4f}")
    for row in entry["comparisons_cold"]:
        lines.append(f"{entry['cell']:28s} cold  {row['method']} - {row['reference']}: {row['mean_diff']:+.4f} "
                     f"(95% CI {row['diff_ci_low']:+.4f} .. {row['diff_ci_high']:+.4f}, p {row['p']:.4f})")
    epochs = {form: [seed["epochs"] for seed in entry["forms"][form]["seeds"]] for form in FORMS}
    lines.append(f"{entry['cell']:28s} epochs {epochs}; seconds "
                 f"{ {form: entry['forms'][form]['seconds'] for form in FORMS} }")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=None,
                        help="graph cells (FREEDOM or SMORE); default: cold_start.graph_cells' FREEDOM and SMORE cells")
    parser.add_argument("--out", default=None, help="JSON file for every seed's numbers")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (the report's)")
    args = parser.parse_args()
    params = load_params()
    cells = args.cells or [cell for cell in params.cold_start.graph_cells
                           if params.graph.cells[cell].model in ("freedom", "smore")]
    measure_and_record(cells, lambda cell: measure_cell(cell, args.resamples), summary_lines, args.out, "cells")


if __name__ == "__main__":
    main()
