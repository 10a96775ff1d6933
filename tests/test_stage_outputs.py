"""Reading another stage's output: a missing, truncated or corrupt file names itself and the stage to run."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from results_helpers import prepared, study
from vlm4rec.errors import StudyError
from vlm4rec.evaluation import MethodKey, load_result, save_result
from vlm4rec.pipeline.outputs import read_metrics
from vlm4rec.stage_outputs import producing_stage, stage_output
from study_params import REPO


@pytest.mark.parametrize("path, stage", [
    ("data/results/graph/lightgcn/lightgcn@seed0/chosen.json", "graph@lightgcn"),
    ("metrics/graph/vbpr-title-image.json", "graph@vbpr-title-image"),
    ("metrics/ablations/description-image_only.json", "ablate_grounded@description-image_only"),
    ("metrics/ablations/title.json", "ablate_ungrounded@title"),
    ("data/results/fusion/fusion_gating@seed0/test_topk.npy", "fuse"),
    ("data/embeddings/title.npy", "embed"),
    ("data/results/global_time/ease/summary.json", "robustness"),
    ("elsewhere/file.txt", None),
])
def test_the_stage_that_writes_a_file_is_found_in_dvc_yaml(path: str, stage: str | None) -> None:
    assert producing_stage(path, REPO / "dvc.yaml") == stage


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_missing_file_names_itself_and_its_stage(project: Path) -> None:
    with pytest.raises(StudyError, match=r"^data/prepared/items.parquet is missing: run `dvc repro` or the prepare "
                                         r"stage first$"):
        with stage_output("data/prepared/items.parquet"):
            pd.read_parquet("data/prepared/items.parquet")


def test_a_graph_metrics_file_that_cannot_be_parsed_names_itself(project: Path) -> None:
    (project / "metrics/graph").mkdir(parents=True)
    (project / "metrics/graph/lightgcn.json").write_text('{"cost": {"wall_s": 1')
    with pytest.raises(StudyError, match=r"^metrics/graph/lightgcn.json cannot be read, it is truncated or corrupt "
                                         r"\(JSONDecodeError: .*\): run `dvc repro` or the graph@lightgcn stage again$"):
        read_metrics("graph/lightgcn")


@pytest.mark.parametrize("name, damage", [
    ("test_topk.npy", lambda path: path.write_bytes(path.read_bytes()[:100])),
    ("test_per_user.parquet", lambda path: path.write_bytes(path.read_bytes()[:-40])),
    ("summary.json", lambda path: path.write_text('{"method": "title"}')),
    ("chosen.json", lambda path: path.unlink()),
])
def test_a_damaged_result_file_names_itself_and_its_stage(project: Path, name: str, damage) -> None:
    folder = Path("data/results/match/title")
    save_result(study(prepared())[MethodKey("title")], folder)
    damage(folder / name)
    with pytest.raises(StudyError, match=rf"^data/results/match/title/{name} (is missing|cannot be read).*: run "
                                         r"`dvc repro` or the match stage (first|again)$"):
        load_result(folder)


def test_an_intact_result_reads_back(project: Path) -> None:
    result = study(prepared())[MethodKey("title")]
    save_result(result, "data/results/match/title")
    assert np.array_equal(load_result("data/results/match/title").test_topk, result.test_topk)
