"""The result folders and cell metrics files params.yaml names (the report reads exactly these)."""
from __future__ import annotations

from pathlib import Path

from vlm4rec.config import load_params
from vlm4rec.pipeline.study_files import StudyFiles
from study_params import REPO


def test_the_repository_study_names_each_method_seed_and_cell_once() -> None:
    study = StudyFiles.of(load_params(REPO / "params.yaml"))
    results = [path.as_posix() for path in study.results]
    # match: 5 representations + 3 baselines; fuse: late, 3 hybrids, 3 learned x 3 seeds; graph: 11 cells x 3 seeds
    assert len(results) == len(set(results)) == 8 + (1 + 3 + 9) + 33
    assert "data/results/match/ease" in results and "data/results/fusion/hybrid_image_ease" in results
    assert "data/results/fusion/fusion_gating@seed2" in results and "data/results/fusion/fusion_gating" not in results
    assert "data/results/graph/lightgcn/lightgcn@seed0" in results
    assert {path.name for path in study.metrics if path.parent.name == "ablations"} == {
        "description-image_only.json", "description-image_title.json", "title_description-image_only.json",
        "title_description-image_title.json", "title.json", "image.json"}
    assert len(study.metrics) == 11 + 4 + 2 and Path("metrics/graph/smore-title-image.json") in study.metrics
