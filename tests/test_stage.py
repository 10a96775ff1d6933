"""The stage runner: declared params only, notebook lookup, grid cells, and the real dvc.yaml grid."""
from __future__ import annotations

import ast
import builtins
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlm4rec.config import EvalParams, GraphCellParams, GraphParams, load_params
from vlm4rec.errors import StudyError
from vlm4rec.stage import (declared_params, notebook_parameters, run_stage_function, sections, stage_definition,
                           stage_notebook, stage_params)

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
        if "foreach" in stage:  # a cell: the template with the first key
            name = f"{name}@{stage['foreach'][0]}"
            stage = stage["do"]
        params = declared_params(name, REPO / "params.yaml", REPO / "dvc.yaml")
        assert params, name
        if stage["cmd"].startswith("python -m vlm4rec.stage "):
            assert (REPO / stage_notebook(name, REPO / "dvc.yaml")).exists(), name
        else:
            assert stage["cmd"].split()[2].startswith("vlm4rec.pipeline."), name
            assert "matrix" not in stage or "--cell" in stage["cmd"], name


def test_ablation_grid_expands_to_the_expected_cells() -> None:
    """DVC's own expansion of the matrix stages: one cell per representation (and prompt arm); each cell
    runs every aggregation x history cap of params.yaml inside."""
    listed = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    grid = yaml.safe_load((REPO / "params.yaml").read_text())["ablation"]
    expected = {f"ablate_grounded@{r}-{a}" for r, a in itertools.product(grid["grounded"], grid["arms"])}
    expected |= {f"ablate_ungrounded@{r}" for r in grid["ungrounded"]}
    assert {name for name in listed if name.startswith("ablate_")} == expected


def parameters_cell_values(notebook: Path) -> dict:
    """The literal assignments of a notebook's cell tagged ``parameters``."""
    cells = json.loads(notebook.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook} must have exactly one parameters cell"
    tree = ast.parse("".join(tagged[0]["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def test_notebook_parameter_defaults_equal_what_the_runner_injects() -> None:
    """A notebook opened by hand runs with the same values as the stage: its parameters cell holds exactly
    the params.yaml keys the stage declares, with the current values."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if not stage.get("cmd", "").startswith("python -m vlm4rec.stage "):
            continue
        notebook = REPO / stage_notebook(name, REPO / "dvc.yaml")
        values = parameters_cell_values(notebook)
        assert values == notebook_parameters(name, REPO / "params.yaml", REPO / "dvc.yaml"), name
        assert not set(values) & set(dir(builtins)), f"{name}: a parameter shadows a Python builtin"


def test_source_notebooks_are_stored_without_outputs() -> None:
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells), notebook.name


def test_sigterm_takes_the_notebook_kernel_down_with_the_runner(tmp_path: Path) -> None:
    """The kernel runs in its own process session and would notice its parent's death only after a while
    (and meanwhile keep computing): the runner must have shut it down by the time it exits."""
    import nbformat
    import os
    import signal
    import time

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("eval = {}", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\ntime.sleep(120)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(notebook, tmp_path / "notebooks" / "slow.ipynb")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {
        "cmd": "python -m vlm4rec.stage slow", "deps": ["notebooks/slow.ipynb"], "params": ["eval.seed"]}}}))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    runner = subprocess.Popen([sys.executable, "-m", "vlm4rec.stage", "slow"], cwd=tmp_path,
                              env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "kernel.pid"
    deadline = time.monotonic() + 90
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    kernel = int(pid_file.read_text())
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) != 0
    deadline = time.monotonic() + 0.3
    while Path(f"/proc/{kernel}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{kernel}").exists() or "Z" in Path(f"/proc/{kernel}/stat").read_text().split()[2]


def test_a_foreach_cell_reads_its_template_and_its_own_params(project: Path) -> None:
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"graph": {"foreach": {"a": 1, "b": 2}, "do": {
        "cmd": "python -m vlm4rec.pipeline.graph ${key}", "params": ["eval.ks", "cells.${key}"]}}}}))
    (project / "params.yaml").write_text(yaml.safe_dump(PARAMS | {"cells": {"a": {"model": "x"}, "b": {"model": "y"}}}))
    assert declared_params("graph@b") == {"eval": {"ks": [5, 10]}, "cells": {"b": {"model": "y"}}}
    assert stage_definition("graph@a")["cmd"].endswith("${key}")


STUDY_DVC_YAML = """
stages:
  cell:
    foreach: [lightgcn, vbpr-title-image]
    do:
      cmd: python -m vlm4rec.pipeline.graph ${key}
      params:
        - eval.select_metric
        - graph.regime
        - graph.training
        - graph.cells.${key}
  note:
    cmd: python -m vlm4rec.stage note
    deps: [notebooks/note.ipynb]
    params: [eval.select_metric, ablation]
  other:
    cmd: python -m vlm4rec.pipeline.other
    params: [eval.ks, {other.yaml: [x.y]}]
"""


@pytest.fixture()
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with the study's params.yaml and stages that declare parts of sections."""
    (tmp_path / "dvc.yaml").write_text(STUDY_DVC_YAML)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_notebook_less_stage_function_gets_typed_sections_and_eval_as_evaluation(study: Path) -> None:
    """``eval`` would shadow the builtin as a parameter name: stage functions take it as ``evaluation``; a
    section holds the declared keys, typed, down to one entry of a mapping (``graph.cells.<cell>``)."""
    evaluation, graph, cell = run_stage_function("cell@lightgcn", lambda evaluation, graph, cell:
                                                 (evaluation, graph, cell), cell="lightgcn")
    assert cell == "lightgcn" and isinstance(evaluation, EvalParams) and isinstance(graph, GraphParams)
    assert evaluation.select_metric == "ndcg@10"
    assert graph.cells == {"lightgcn": GraphCellParams(model="lightgcn", modalities=[])}
    assert graph.chosen_regime.batch_size == 32768 and graph.chosen_regime.models["freedom"]["lr"] == 0.0125


def test_reading_an_undeclared_key_names_the_key_and_the_stage(study: Path) -> None:
    params = stage_params("cell@vbpr-title-image", load_params())
    assert params.graph.cells["vbpr-title-image"].modalities == ["title", "image"]
    with pytest.raises(StudyError, match=r"^stage cell@vbpr-title-image reads eval\.ks, which dvc\.yaml does not "
                                         r"declare"):
        params.eval.ks
    with pytest.raises(StudyError, match=r"reads graph\.scale, which"):
        params.graph.chosen_scale
    with pytest.raises(StudyError, match=r"reads match, which"):
        params.match
    assert "lightgcn" not in params.graph.cells  # another cell's entry is not handed over


def test_typed_sections_come_from_params_yaml_only(study: Path) -> None:
    (study / "other.yaml").write_text("x: {y: 3}\n")
    with pytest.raises(StudyError, match="declares x.y of .*other.yaml: typed sections come from params.yaml only"):
        stage_params("other", load_params())


def test_a_notebook_turns_its_parameters_into_validated_sections(study: Path) -> None:
    """The injected dicts win over params.yaml (papermill may be given other values) and are validated with the
    schema's models, cross-field rules included."""
    ablation = declared_params("note")["ablation"] | {"caps": ["all", 5]}
    p = sections("note", eval={"select_metric": "recall@20"}, ablation=ablation)
    assert p.eval.select_metric == "recall@20" and p.ablation.caps == ["all", 5]
    injected = sections("note", evaluation={"select_metric": "recall@20"}, ablation=ablation)  # the runner's name
    assert injected.eval.select_metric == "recall@20"
    with pytest.raises(StudyError, match="reads eval.ks"):
        p.eval.ks
    with pytest.raises(StudyError, match=r"ablation\.caps\[1\] = 0: .*history caps"):
        sections("note", eval={"select_metric": "recall@20"}, ablation=ablation | {"caps": ["all", 0]})
    with pytest.raises(StudyError, match=r"eval: select_metric 'recall@7' must be <metric>@<k>"):
        sections("note", eval={"select_metric": "recall@7"}, ablation=ablation)


def test_a_notebook_must_pass_exactly_the_declared_parameters(study: Path) -> None:
    ablation = declared_params("note")["ablation"]
    with pytest.raises(StudyError, match="the parameters of stage note lack eval.select_metric, which dvc.yaml"):
        sections("note", ablation=ablation)
    with pytest.raises(StudyError, match="hold keys dvc.yaml does not declare for it"):
        sections("note", eval={"select_metric": "ndcg@10", "ks": [10]}, ablation=ablation)


def _one_cell_stage(tmp_path: Path, code: str, tags: tuple[str, ...] = ("parameters",)) -> subprocess.CompletedProcess:
    """Run ``python -m vlm4rec.stage bad`` on a notebook whose parameters cell (tagged ``tags``) is followed by
    one cell, ``code``, in a fresh process."""
    import nbformat
    import os

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("evaluation = {'seed': 7}", metadata={"tags": list(tags)}),
        nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(notebook, tmp_path / "notebooks" / "bad.ipynb")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"bad": {
        "cmd": "python -m vlm4rec.stage bad", "deps": ["notebooks/bad.ipynb"], "params": ["eval.seed"]}}}))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return subprocess.run([sys.executable, "-m", "vlm4rec.stage", "bad"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(REPO)})


def test_a_study_error_subclass_raised_in_the_notebook_is_one_error_line_and_the_log_path(tmp_path: Path) -> None:
    """The runner process never imported vlm4rec.grounding: the class is still recognised."""
    done = _one_cell_stage(tmp_path, "from vlm4rec.grounding.base import GroundingStopped\n"
                                     "raise GroundingStopped('every server is unreachable')")
    assert done.returncode == 1
    assert done.stderr.endswith("\nERROR: bad: every server is unreachable\n"
                                "  log (the executed notebook, with the traceback): reports/bad.ipynb\n")
    assert "Traceback" not in done.stderr and "GroundingStopped" in (tmp_path / "reports" / "bad.ipynb").read_text()


def test_any_other_error_in_the_notebook_keeps_its_traceback(tmp_path: Path) -> None:
    done = _one_cell_stage(tmp_path, "raise KeyError('a bug')")
    assert done.returncode == 1 and "Traceback" in done.stderr and "ERROR:" not in done.stderr


def test_the_runner_knows_every_study_error_subclass_of_the_package() -> None:
    """The source scan equals the class tree once every module defining such a class is imported."""
    import importlib

    from vlm4rec.errors import StudyError
    from vlm4rec.stage import study_error_message, study_error_names

    for source in sorted((REPO / "vlm4rec").rglob("*.py")):
        if "StudyError" in source.read_text():
            importlib.import_module(".".join(source.relative_to(REPO).with_suffix("").parts))
    tree, todo = set(), [StudyError]
    while todo:
        cls = todo.pop()
        tree.add(cls.__name__)
        todo += cls.__subclasses__()
    assert study_error_names() == tree >= {"StudyError", "DataFormatError", "GroundingStopped"}
    ray_value = "ray::f()\n  File \"x.py\", line 1\nvlm4rec.data.DataFormatError: x\nDataFormatError: bad line 3"
    assert study_error_message("RayTaskError(DataFormatError)", ray_value) == "bad line 3"
    assert study_error_message("DataFormatError", "bad line 3") == "bad line 3"
    assert study_error_message("KeyError", "'a'") is None


RAN = "open('ran', 'w').write(str(evaluation))"


def test_a_notebook_whose_parameters_cell_lost_its_tag_does_not_run(tmp_path: Path) -> None:
    done = _one_cell_stage(tmp_path, RAN, tags=())
    assert done.returncode == 1 and done.stderr.startswith(
        "ERROR: notebooks/bad.ipynb has 0 code cells tagged `parameters`, not one")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("code, names", [("evaluation = {'seed': 5}\n" + RAN, "evaluation"),
                                         ("evaluation['seed'] = 5\n" + RAN, "evaluation"),
                                         ("for evaluation in [{}]:\n    pass\n" + RAN, "evaluation")])
def test_a_notebook_that_overrides_an_injected_value_does_not_run(tmp_path: Path, code: str, names: str) -> None:
    done = _one_cell_stage(tmp_path, code)
    assert done.returncode == 1 and done.stderr.startswith(
        f"ERROR: notebooks/bad.ipynb: code cell 2 assigns {names} after the parameters cell, overriding the values "
        "params.yaml gives the stage")
    assert not (tmp_path / "ran").exists()


def test_a_tagged_notebook_runs_on_the_value_params_yaml_gives(tmp_path: Path) -> None:
    """The parameters cell's own default (seed 7) is replaced by params.yaml's (0)."""
    assert _one_cell_stage(tmp_path, RAN).returncode == 0
    assert (tmp_path / "ran").read_text() == "{'seed': 0}"


def test_the_names_a_cell_binds_are_found_and_reads_are_not() -> None:
    from vlm4rec.stage import bound_names

    assert bound_names("%matplotlib inline\nx, (y, z) = 1, (2, 3)\nw.a += 1\nimport numpy as np\n"
                       "del q\ndef f(a):\n    return a\nprint(eval['seed'])") == {"x", "y", "z", "w", "np", "q", "f"}


def test_a_dead_kernel_names_the_stage_the_notebook_and_the_likely_cause(tmp_path: Path) -> None:
    done = _one_cell_stage(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.endswith("ERROR: bad: the kernel running notebooks/bad.ipynb died (most likely the machine ran "
                                "out of memory and the system killed it: free memory, or lower the stage's batch and "
                                "block sizes (eval.block_size, the stage's batch_size keys) or user sample; else the "
                                "process was killed or crashed in native code); the executed notebook up to the cell "
                                "that was running: reports/bad.ipynb\n")
