"""The params.yaml schema: every bad value is caught at stage start with a message naming key, value and
what is allowed; the documentation generated from the schema is current."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlm4rec import stage
from vlm4rec.config import StudyParams, load_params, markdown_reference, validate_params
from vlm4rec.errors import StudyError

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(dotted: str, value) -> dict:
    params = copy.deepcopy(PARAMS)
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    return params


def test_the_repository_params_are_valid_and_every_key_is_documented() -> None:
    assert isinstance(load_params(REPO / "params.yaml"), StudyParams)

    def undocumented(model, prefix=""):
        for key, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from undocumented(annotation, f"{prefix}{key}.")
            elif not info.description:
                yield prefix + key

    assert list(undocumented(StudyParams)) == []


@pytest.mark.parametrize("key, value, message", [
    ("split.test_ratio", 1.5, "split.test_ratio = 1.5: Input should be less than 1"),
    ("split.test_ratio", -0.1, "split.test_ratio = -0.1: Input should be greater than 0"),
    ("split.val_ratio", 1.5, "split.val_ratio = 1.5: Input should be less than 1"),
    ("split.val_ratio", 0.85, "val_ratio + test_ratio = 1.05 leaves no training share"),
    ("fusion.seeds", [], "fusion.seeds = []: List should have at least 1 item"),
    ("eval.block_size", 0, "eval.block_size = 0: Input should be greater than or equal to 1"),
    ("eval.block_size", -5, "eval.block_size = -5: Input should be greater than or equal to 1"),
    ("profile.aggregation", "recent", "profile.aggregation = 'recent': Input should be 'mean', 'recency' or 'knn_sum'"),
    ("baselines.ease.l2", ["5O0"], "baselines.ease.l2[0] = '5O0': Input should be a valid number"),
    ("baselines.ease.l2", [0], "baselines.ease.l2[0] = 0: Input should be greater than 0"),
    ("eval.select_metric", "ndcg@15", "select_metric 'ndcg@15' must be <metric>@<k> with"),
    ("ablation.arms", ["image_only", "image_caption"], "ablation.arms[1] = 'image_caption': Input should be"),
    ("ablation.caps", ["all", 0], "ablation.caps[1] = 0: Input should be greater than or equal to 1, or Input should be 'all'"),
    ("data.universe", "everything", "data.universe = 'everything': Input should be 'catalogue' or 'interacted'"),
    ("ground.min_success_rate", 1.2, "ground.min_success_rate = 1.2: Input should be less than or equal to 1"),
    ("fusion.concat_grid_step", 0.3, "concat_grid_step 0.3 must divide 1"),
    ("graph.scale", "full", "graph.scale full runs the references' grids in their training regime: set graph.regime "
                            "to paper"),
    ("graph.regime", "slow", "graph.regime = 'slow': Input should be 'fast' or 'paper'"),
    ("graph.training.paper.negatives", "popular", "graph.training.paper.negatives = 'popular': Input should be"),
    ("graph.cells.smore-title-image.modalities", ["title"],
     "cell smore-title-image: smore takes two modalities, image and one text representation"),
])
def test_each_bad_value_names_the_key_the_value_and_what_is_allowed(key, value, message) -> None:
    with pytest.raises(StudyError) as caught:
        validate_params(with_change(key, value))
    assert message in str(caught.value)


def test_unknown_and_missing_keys_are_named() -> None:
    params = with_change("baselines.ease.l22", [500])
    del params["baselines"]["ease"]["l2"]
    with pytest.raises(StudyError) as caught:
        validate_params(params)
    assert "baselines.ease.l22: unknown key (allowed here: l2)" in str(caught.value)
    assert "baselines.ease.l2: missing (EASE^R L2 penalties tried on validation)" in str(caught.value)
    assert "2 invalid parameters" in str(caught.value)


def test_source_and_backend_keys_must_be_set_when_chosen() -> None:
    with pytest.raises(StudyError, match="data.source is 'mmrec' but data.mmrec.root and name are not set"):
        validate_params(with_change("data.source", "mmrec"))
    with pytest.raises(StudyError, match="ground.backend is 'hf' but ground.hf.model is not set"):
        validate_params(with_change("ground.backend", "hf"))
    urls = with_change("ground.openai.base_url", ["http://a:8000/v1", "http://b:8000/v1"])
    assert validate_params(urls).ground.openai.base_url == ["http://a:8000/v1", "http://b:8000/v1"]


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: movielens_1m\n   seed: 0\n")
    with pytest.raises(StudyError, match=r"params.yaml:3:\d+: YAML syntax error"):
        load_params(path)
    with pytest.raises(StudyError, match="no such parameter file"):
        load_params(tmp_path / "absent.yaml")


def test_a_stage_stops_before_any_work_with_the_message_and_no_traceback(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("split.test_ratio", 1.5)))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["prepare"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: params.yaml: 1 invalid parameter:\n  - split.test_ratio = 1.5")
    assert "Traceback" not in err and not (tmp_path / "reports").exists()


def test_the_command_line_prints_the_message_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("eval: [\n")
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    done = subprocess.run([sys.executable, "-m", "vlm4rec.stage", "match"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert done.stderr.startswith("ERROR: params.yaml:2:1: YAML syntax error") and "Traceback" not in done.stderr


def test_the_parameter_reference_in_docs_is_generated_from_the_schema() -> None:
    assert (REPO / "docs" / "params.md").read_text() == markdown_reference() + "\n", \
        "docs/params.md is stale: run python -m vlm4rec.config > docs/params.md"
