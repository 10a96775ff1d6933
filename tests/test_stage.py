"""The stage runner: declared params only, notebook lookup, grid cells, and the real dvc.yaml grid."""
from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
import yaml

from vlm4rec.stage import declared_params, stage_definition, stage_notebook

REPO = Path(__file__).resolve().parents[1]

DVC_YAML = """
stages:
  prepare:
    cmd: python -m vlm4rec.stage prepare
    deps: [notebooks/01_prepare.ipynb, vlm4rec/data.py]
    params: [data.source, split]
  grid:
    matrix:
      rep: [a, b]
    cmd: python -m vlm4rec.pipeline.ablate grid --cell rep=${item.rep}
    deps: [data/prepared]
    params: [eval.ks, {other.yaml: [x.y]}]
"""
PARAMS = {"data": {"source": "movielens_1m", "min_rating": 4}, "split": {"protocol": "temporal_ratio"},
          "eval": {"ks": [5, 10], "seed": 0}}


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_declared_params_pass_exactly_the_listed_keys(project: Path) -> None:
    assert declared_params("prepare") == {"data": {"source": "movielens_1m"},
                                          "split": {"protocol": "temporal_ratio"}}


def test_declared_params_of_a_matrix_stage_and_other_param_files(project: Path) -> None:
    with pytest.raises(FileNotFoundError, match="other.yaml"):
        declared_params("grid")
    (project / "other.yaml").write_text("x: {y: 3, z: 4}\n")
    assert declared_params("grid") == {"eval": {"ks": [5, 10]}, "x": {"y": 3}}


def test_unknown_key_and_unknown_stage_fail_clearly(project: Path) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {}, "split": {}}))
    with pytest.raises(KeyError, match="data.source"):
        declared_params("prepare")
    with pytest.raises(KeyError, match="no stage 'nope'"):
        stage_definition("nope")


def test_stage_notebook_is_the_one_notebook_dependency(project: Path) -> None:
    assert stage_notebook("prepare") == Path("notebooks/01_prepare.ipynb")
    with pytest.raises(ValueError, match="exactly one notebook"):
        stage_notebook("grid")


def test_every_real_stage_declares_params_that_exist_and_one_notebook_or_its_own_module() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        params = declared_params(name, REPO / "params.yaml", REPO / "dvc.yaml")
        assert params, name
        if stage["cmd"].startswith("python -m vlm4rec.stage "):
            assert (REPO / stage_notebook(name, REPO / "dvc.yaml")).exists(), name
        else:
            assert stage["cmd"].split()[2].startswith("vlm4rec.pipeline."), name
            assert "matrix" not in stage or "--cell" in stage["cmd"], name


def test_ablation_grid_expands_to_the_expected_cells() -> None:
    """DVC's own expansion of the matrix stages equals the product of the params.yaml lists."""
    listed = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    grid = yaml.safe_load((REPO / "params.yaml").read_text())["ablation"]
    expected = {f"ablate_grounded@{r}-{a}-{g}-{c}" for r, a, g, c in
                itertools.product(grid["grounded"], grid["arms"], grid["aggregations"], grid["caps"])}
    expected |= {f"ablate_ungrounded@{r}-{g}-{c}" for r, g, c in
                 itertools.product(grid["ungrounded"], grid["aggregations"], grid["caps"])}
    assert {name for name in listed if name.startswith("ablate_")} == expected
