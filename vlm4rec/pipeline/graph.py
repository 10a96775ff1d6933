"""Graph stage: one cell (model x modality set) of the multimodal recommenders, as a DVC ``foreach`` cell.

Each cell feeds representations written by the embed stage (``title``, ``description_<arm>``, ``image``...)
to LightGCN, VBPR, FREEDOM or SMORE (:mod:`vlm4rec.multimodal`) as modalities. Its grid (``graph.<scale>``)
and number of epochs are chosen on validation NDCG with the first seed; the chosen configuration is refitted
on train + validation for the chosen epochs and tested once per seed (``graph.selection: refit``), or, with
``best_checkpoint`` (MMRec's protocol), each seed's train-only run is tested at its best validation check.
Graphs, negatives and early stopping see only the history of the phase (train, then train + validation). Every model trains in the regime
``graph.regime`` (``graph.training.<regime>``: fast or the references' paper settings).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from vlm4rec.config import EvalParams, GraphParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import EvalData, MethodKey, MethodResult, select_and_test_seeds
from vlm4rec.methods import CATALOGUE
from vlm4rec.multimodal import candidates, regime_options
from vlm4rec.pipeline.outputs import EMBEDDINGS_DIR, PREPARED_DIR, RESULTS_DIR, peak_rss_mb
from vlm4rec.pipeline.stage_metrics import GraphCellMetrics, GraphCost, GraphTraining
from vlm4rec.tables import test_metrics_json, timing_json
from vlm4rec.representations import load_vectors
from vlm4rec.stage import exit_on_study_error, run_stage_function

GRAPH_RESULTS = RESULTS_DIR / "graph"
SCHEDULE_KEYS = ("lr", "lr_decay", "lr_decay_step", "epochs", "eval_every", "patience", "batch_size")


def training_schedule(model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The optimiser schedule ``model`` trains with under the regime's ``options`` (its configuration's
    defaults where the regime sets nothing): what the report shows beside every cell."""
    config = CATALOGUE[model].config
    assert config is not None, f"{model} is not a trained model"
    values = config(**{key: value for key, value in options.items() if key in config.model_fields})
    return {key: getattr(values, key) for key in SCHEDULE_KEYS}


def run_cell(evaluation: EvalParams, graph: GraphParams, cell: str) -> dict[MethodKey, MethodResult]:
    """Select, refit and test one cell over its seeds; results under ``data/results/graph/<cell>``, metrics
    (test and validation numbers, chosen configuration, epochs run and best epoch, wall times) in
    ``metrics/graph/<cell>.json``."""
    spec, scale = graph.cells[cell], graph.chosen_scale
    modalities = {name: load_vectors(EMBEDDINGS_DIR, name, f"graph.cells.{cell}.modalities")
                  for name in spec.modalities}
    data = EvalData.from_prepared(load_prepared(PREPARED_DIR), ranker(None, evaluation.device, evaluation.block_size))
    fixed = regime_options(graph, spec.model)
    grid = scale.grids[spec.model]
    started = time.perf_counter()
    results = select_and_test_seeds(cell, lambda seed: candidates(spec.model, modalities, grid, fixed, seed),
                                    data, scale.seeds, evaluation.ks, evaluation.select_metric, GRAPH_RESULTS / cell,
                                    refit=graph.selection == "refit")
    first = next(iter(results.values()))
    GraphCellMetrics(
        model=spec.model, modalities=spec.modalities, scale=graph.scale, regime=graph.regime,
        schedule=training_schedule(spec.model, fixed), selection=graph.selection,
        methods=test_metrics_json(results),
        training=GraphTraining(best_epoch=first.training["best_epoch"], epochs_run=first.training["epochs_run"],
                               stopped_early=first.training["stopped_early"],
                               validation_curve=first.training["curve"], grid_size=len(first.val_grid)),
        cost=GraphCost(wall_s=round(time.perf_counter() - started, 3), peak_rss_mb=round(peak_rss_mb(), 1),
                       methods=timing_json(results))).save(GraphCellMetrics.path(cell))
    return results


def main(argv: list[str] | None = None) -> None:
    """``python -m vlm4rec.pipeline.graph CELL``: one cell of the ``graph`` foreach stage."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("cell", help="a key of params.yaml graph.cells")
    args = parser.parse_args(argv)
    exit_on_study_error(lambda: run_stage_function(f"graph@{args.cell}", run_cell, cell=args.cell))


if __name__ == "__main__":
    main()
