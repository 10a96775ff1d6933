"""benchmarks/regime_gaps.py: the committed record is what the raw regime runs and params.yaml give."""
from __future__ import annotations

import json

import regime_gaps
from study_params import REPO

from vlm4rec.config import load_params


def test_the_committed_record_follows_from_the_runs_and_the_study_params() -> None:
    """A change of params.yaml's regimes or grids (or a new run) without regenerating the record fails here,
    so the report never states a gap of other settings."""
    record = regime_gaps.gaps(load_params(REPO / "params.yaml").graph,
                              sorted((REPO / "benchmarks").glob("results_regime_*.json")))
    assert record == json.loads((REPO / "benchmarks" / "regime_gaps.json").read_text())
    # FREEDOM's paper run used the reference's projection_weight (1e-3), its fast regime 0: not one model
    assert "results_regime_freedom_title_image_paper.json (other settings)" in record["left_out"]
    assert [run["seed"] for run in record["models"]["lightgcn"]["paper"]] == [0, 1, 2]
