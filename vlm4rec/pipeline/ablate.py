"""Ablation grid cells (DVC matrix stages) and the table of all finished cells.

Each cell (representation x prompt arm x profile aggregation x history cap) chooses its aggregation's
knob on validation and is tested once; the table records the chosen configuration's validation metrics
next to the test metrics, is ordered by validation, and marks per representation the cell validation
selects. Test numbers of the other cells are for reading, never for choosing.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import pandas as pd
import yaml

from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import EvalData, MethodResult, select_and_test
from vlm4rec.pipeline.outputs import (ABLATIONS_DIR, EMBEDDINGS_DIR, METRICS_DIR, PREPARED_DIR, peak_rss_mb,
                                      write_json)
from vlm4rec.pipeline.profiles import profile_candidates
from vlm4rec.representations import load_vectors
from vlm4rec.stage import exit_on_study_error, run_stage_function


def cell_name(cell: dict[str, Any]) -> str:
    """Directory / metrics name of one grid cell, e.g. ``description-image_only-mean-all``."""
    return "-".join(str(cell[k]) for k in ("representation", "arm", "aggregation", "cap") if k in cell)


def cell_representation(cell: dict[str, Any]) -> str:
    """The embedding a cell matches with: ``<representation>_<arm>`` for grounded representations."""
    return f"{cell['representation']}_{cell['arm']}" if "arm" in cell else cell["representation"]


def run_cell(eval: dict[str, Any], profile: dict[str, Any], cell: dict[str, Any]) -> MethodResult:
    """One ablation cell: its aggregation's knob chosen on validation, test read once."""
    name = cell_name(cell)
    profile = profile | {"aggregation": cell["aggregation"],
                         "history_cap": None if cell["cap"] == "all" else int(cell["cap"])}
    rep = cell_representation(cell)
    candidates = profile_candidates(load_vectors(EMBEDDINGS_DIR, rep, "ablation"), profile, rep)
    data = EvalData.from_prepared(load_prepared(PREPARED_DIR), ranker(None, eval["device"], eval["block_size"]))
    start = time.perf_counter()
    result = select_and_test(name, candidates, data, eval["ks"], eval["select_metric"], ABLATIONS_DIR / name)
    write_json(METRICS_DIR / "ablations" / f"{name}.json",
               {"cell": cell, "representation": rep, "chosen": result.config, "select_metric": eval["select_metric"],
                "validation": result.val_summary(), "test": result.test_summary(),
                "cost": {"wall_s": round(time.perf_counter() - start, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}})
    return result


def ablation_table() -> pd.DataFrame:
    """Every finished cell: chosen configuration, validation and test metrics (``val_`` / ``test_``
    prefixes), ordered by the validation selection metric; ``selected`` marks, per representation (and
    prompt arm), the cell validation chooses."""
    rows = []
    for path in sorted((METRICS_DIR / "ablations").glob("*.json")):
        cell = json.loads(path.read_text())
        rows.append({**cell["cell"], "arm": cell["cell"].get("arm", "-"), "representation_file": cell["representation"],
                     "chosen": json.dumps(cell["chosen"]), "select_metric": cell["select_metric"],
                     **{f"val_{k}": v for k, v in cell["validation"].items()},
                     **{f"test_{k}": v for k, v in cell["test"].items()}, "wall_s": cell["cost"]["wall_s"]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    metric = f"val_{table['select_metric'].iloc[0]}"
    table = table.sort_values([metric, "representation_file"], ascending=[False, True], kind="mergesort")
    best = table.groupby("representation_file", sort=False)[metric].idxmax()
    table["selected"] = table.index.isin(best.to_numpy())
    return table.reset_index(drop=True)


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
    notebook: a grid has dozens of cells; the ``ablations`` stage's notebook summarises them all)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("stage", help="the matrix stage in dvc.yaml (ablate_grounded, ablate_ungrounded)")
    parser.add_argument("--cell", nargs="+", required=True, metavar="KEY=VALUE",
                        help="the cell's matrix values, parsed as YAML scalars")
    args = parser.parse_args(argv)
    exit_on_study_error(lambda: run_stage_function(args.stage, run_cell, cell=parse_cell(args.cell)))


if __name__ == "__main__":
    main()
