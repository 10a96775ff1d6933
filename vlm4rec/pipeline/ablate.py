"""Ablation grid cells (DVC matrix stages) and the table of all finished cells."""
from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from vlm4rec.evaluation import EvalData, MethodResult, select_and_test
from vlm4rec.pipeline.common import (ABLATIONS_DIR, METRICS_DIR, load_prepared_data,
                                     load_representation_vectors, peak_rss_mb, profile_candidates, write_json)


def cell_name(cell: dict[str, Any]) -> str:
    """Directory / metrics name of one grid cell, e.g. ``description-image_only-mean-all``."""
    return "-".join(str(cell[k]) for k in ("representation", "arm", "aggregation", "cap") if k in cell)


def cell_representation(cell: dict[str, Any]) -> str:
    """The embedding a cell matches with: ``<representation>_<arm>`` for grounded representations."""
    return f"{cell['representation']}_{cell['arm']}" if "arm" in cell else cell["representation"]


def run_cell(stage: str, params: dict[str, Any], cell: dict[str, Any]) -> MethodResult:
    """One ablation cell: its aggregation's knob chosen on validation, test read once."""
    name = cell_name(cell)
    profile = params["profile"] | {"aggregation": cell["aggregation"],
                                   "history_cap": None if cell["cap"] == "all" else int(cell["cap"])}
    rep = cell_representation(cell)
    data = EvalData.from_prepared(load_prepared_data())
    start = time.perf_counter()
    result = select_and_test(name, profile_candidates(load_representation_vectors(rep), profile, rep), data,
                             params["eval"]["ks"], params["eval"]["select_metric"], ABLATIONS_DIR / name)
    write_json(METRICS_DIR / "ablations" / f"{name}.json",
               {"cell": cell, "representation": rep, "chosen": result.config, "test": result.test_summary(),
                "cost": {"wall_s": round(time.perf_counter() - start, 3),
                         "peak_rss_mb": round(peak_rss_mb(), 1)}})
    return result


def ablation_table() -> pd.DataFrame:
    """Every finished cell's chosen configuration and test metrics (one row per cell)."""
    rows = []
    for path in sorted((METRICS_DIR / "ablations").glob("*.json")):
        cell = json.loads(path.read_text())
        rows.append({**cell["cell"], "arm": cell["cell"].get("arm", "-"), "representation_file": cell["representation"],
                     "chosen": json.dumps(cell["chosen"]), **cell["test"], "wall_s": cell["cost"]["wall_s"]})
    return pd.DataFrame(rows)
