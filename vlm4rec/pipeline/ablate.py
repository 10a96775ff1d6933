"""Ablation grid (DVC matrix stages) and the table of all finished configurations.

A matrix cell is one item representation (with its prompt arm, for grounded ones); inside it, every profile
aggregation x history cap of ``params.yaml: ablation`` chooses its aggregation's knob on validation and is
tested once (one process per representation: a process per configuration would cost more than the
computation). The table records each configuration's validation metrics next to its test metrics, is
ordered by validation, and marks per representation the configuration validation selects. Test numbers of
the others are for reading, never for choosing.
"""
from __future__ import annotations

import argparse
import json
import time
from itertools import product
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vlm4rec.config import AblationParams, EvalParams, ProfileParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import EvalData, select_and_test
from vlm4rec.pipeline.outputs import ABLATIONS_DIR, EMBEDDINGS_DIR, PLOTS_DIR, PREPARED_DIR, peak_rss_mb
from vlm4rec.pipeline.stage_metrics import AblationCellMetrics
from vlm4rec.pipeline.profiles import profile_candidates
from vlm4rec.pipeline.study_files import cell_metrics_files, cell_name
from vlm4rec.representations import load_vectors
from vlm4rec.stage import exit_on_study_error, run_stage_function


def cell_representation(cell: dict[str, Any]) -> str:
    """The embedding a cell matches with: ``<representation>_<arm>`` for grounded representations."""
    return f"{cell['representation']}_{cell['arm']}" if "arm" in cell else cell["representation"]


def run_cell(evaluation: EvalParams, profile: ProfileParams, ablation: AblationParams,
             cell: dict[str, Any]) -> list[dict[str, Any]]:
    """Every aggregation x history cap of one representation: knob chosen on validation, test read once;
    one metrics file per cell (``metrics/ablations/<cell>.json``) with a row per configuration."""
    rep = cell_representation(cell)
    vectors = load_vectors(EMBEDDINGS_DIR, rep, "ablation")
    data = EvalData.from_prepared(load_prepared(PREPARED_DIR), ranker(None, evaluation.device, evaluation.block_size))
    rows = []
    for aggregation, cap in product(ablation.aggregations, ablation.caps):
        configuration = cell | {"aggregation": aggregation, "cap": cap}
        name = cell_name(configuration)
        knobs = profile.model_copy(update={"aggregation": aggregation,
                                           "history_cap": None if cap == "all" else int(cap)})
        start = time.perf_counter()
        result = select_and_test(name, profile_candidates(vectors, knobs, rep), data, evaluation.ks,
                                 evaluation.select_metric, ABLATIONS_DIR / cell_name(cell) / f"{aggregation}-{cap}")
        rows.append({"cell": configuration, "representation": rep, "chosen": result.config,
                     "select_metric": evaluation.select_metric, "validation": result.val_summary(),
                     "test": result.test_summary(), "wall_s": round(time.perf_counter() - start, 3)})
    cost = {"wall_s": round(sum(r["wall_s"] for r in rows), 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
    AblationCellMetrics.model_validate({"configurations": rows, "cost": cost}).save(
        AblationCellMetrics.path(cell_name(cell)))
    return rows


def ablation_table(cells: Sequence[Path]) -> pd.DataFrame:
    """Every configuration of the given cells' metrics files (:func:`cell_metrics_files`): chosen knobs,
    validation and test metrics (``val_`` / ``test_`` prefixes), ordered by the validation selection metric;
    ``selected`` marks, per representation (and prompt arm), the configuration validation chooses."""
    rows = []
    for path in cells:
        for row in AblationCellMetrics.load(AblationCellMetrics.path(path.stem)).configurations:
            rows.append({**row.cell, "arm": row.cell.get("arm", "-"), "representation_file": row.representation,
                         "chosen": json.dumps(row.chosen), "select_metric": row.select_metric,
                         **{f"val_{k}": v for k, v in row.validation.items()},
                         **{f"test_{k}": v for k, v in row.test.items()}, "wall_s": row.wall_s})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    metric = f"val_{table['select_metric'].iloc[0]}"
    table = table.sort_values([metric, "representation_file"], ascending=[False, True], kind="mergesort")
    best = table.groupby("representation_file", sort=False)[metric].idxmax()
    table["selected"] = table.index.isin(best.to_numpy())
    return table.reset_index(drop=True)


def run(ablation: AblationParams) -> pd.DataFrame:
    """The ``ablations`` stage: :func:`ablation_table` of the cells ``ablation`` names, with a ``cell`` label per
    configuration (representation / aggregation / cap), written to ``plots/ablations.csv`` (the stage's plot)
    and returned."""
    cells = ablation_table(cell_metrics_files(ablation))
    cells["cell"] = cells["representation_file"] + " / " + cells["aggregation"] + " / cap " + cells["cap"].astype(str)
    PLOTS_DIR.mkdir(exist_ok=True)
    cells.to_csv(PLOTS_DIR / "ablations.csv", index=False)
    return cells


def parse_cell(pairs: list[str]) -> dict[str, Any]:
    """``["cap=20", "arm=image_only"]`` -> ``{"cap": 20, "arm": "image_only"}``."""
    cell = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"grid cell entries are KEY=VALUE, got {pair!r}")
        cell[key] = yaml.safe_load(value)
    return cell


def main(argv: list[str] | None = None) -> None:
    """``python -m vlm4rec.pipeline.ablate STAGE --cell KEY=VALUE ...``: one cell of a matrix stage (no
    notebook: the ``ablations`` stage's notebook summarises all cells)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("stage", help="the matrix stage in dvc.yaml (ablate_grounded, ablate_ungrounded)")
    parser.add_argument("--cell", nargs="+", required=True, metavar="KEY=VALUE",
                        help="the cell's matrix values, parsed as YAML scalars")
    args = parser.parse_args(argv)
    exit_on_study_error(lambda: run_stage_function(args.stage, run_cell, cell=parse_cell(args.cell)))


if __name__ == "__main__":
    main()
