"""dvc.yaml's foreach / matrix lists: written from params.yaml, current, and what makes the reproductions of
issue 23 harmless (run with the real ``dvc`` in one temporary git + DVC repository)."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vlm4rec.config import load_params, validate_params
from vlm4rec.errors import StudyError
from vlm4rec.stage_lists import COMMAND, check_stage_lists, rewritten, stale_lists, wanted_lists
from study_params import RAW, REPO

INJECTED = "x;touch PWNED;echo"


def test_the_repository_dvc_yaml_lists_are_those_of_params_yaml() -> None:
    assert stale_lists(load_params(REPO / "params.yaml"), REPO / "dvc.yaml") == [], f"run {COMMAND}"


def test_rewriting_replaces_only_the_generated_lists(tmp_path: Path) -> None:
    text = ("stages:\n  graph:\n    # kept\n    foreach: ${graph.cells}\n    do:\n      cmd: run ${item}\n"
            "  ablate_ungrounded:\n    matrix:\n      representation: [old]\n    cmd: run ${item.representation}\n")
    wanted = {("graph", "foreach"): ["a", "true", "b.c"], ("ablate_ungrounded", "representation"): ["title"]}
    assert rewritten(text, wanted) == (
        "stages:\n  graph:\n    # kept\n    foreach: [a, 'true', b.c]\n    do:\n      cmd: run ${item}\n"
        "  ablate_ungrounded:\n    matrix:\n      representation: [title]\n    cmd: run ${item.representation}\n")


def test_a_stage_refuses_to_run_on_lists_params_yaml_no_longer_gives(tmp_path: Path) -> None:
    raw = copy.deepcopy(RAW)
    raw["ablation"]["ungrounded"] = ["title"]
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    with pytest.raises(StudyError, match=r"ablate_ungrounded's representation is \['title', 'image'\] in .*"
                                         r"ablation.ungrounded gives \['title'\]\): run `python -m vlm4rec.stage_lists"):
        check_stage_lists(validate_params(raw), tmp_path / "dvc.yaml")
    assert wanted_lists(validate_params(raw))[("ablate_ungrounded", "representation")] == ["title"]
    raw["ablation"]["ungrounded"] = ["image", "title"]  # another order makes the same stages
    check_stage_lists(validate_params(raw), tmp_path / "dvc.yaml")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with the project's dvc.yaml, params.yaml and code, every input of the graph and
    ablation stages present (so that DVC gets as far as removing outputs and running commands), and a
    sentinel file among the study's results."""
    work = tmp_path_factory.mktemp("stage_lists")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, work / name)
    shutil.copytree(REPO / "vlm4rec", work / "vlm4rec", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("data/prepared", "data/embeddings", "data/results"):
        (work / folder).mkdir(parents=True)
    (work / "data/prepared/interactions.parquet").write_text("x")
    (work / "data/results/sentinel").write_text("every result of the study")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        assert _run(cmd, work).returncode == 0, cmd
    return work


def _with_params(repo: Path, change) -> None:
    raw = copy.deepcopy(RAW)
    change(raw)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for name in ("x.npy", f"{INJECTED}.npy"):
        (repo / "data/embeddings" / name).write_text("x")


def _assert_refused_and_harmless(repo: Path, stage: str) -> None:
    repro = _run(["dvc", "repro", "-s", stage], repo)
    assert repro.returncode != 0 and "not found" in repro.stderr, repro.stderr
    assert (repo / "data/results/sentinel").is_file()
    assert not (repo / "PWNED").exists()
    write = _run(["python", "-m", "vlm4rec.stage_lists", "--write"], repo)
    assert write.returncode == 1 and "may hold only letters" in write.stderr, write.stderr
    assert (repo / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()


def test_a_graph_cell_named_dot_dot_deletes_nothing(repo: Path) -> None:
    _with_params(repo, lambda raw: raw["graph"]["cells"].update({"..": {"model": "lightgcn", "modalities": []}}))
    _assert_refused_and_harmless(repo, "graph@..")


def test_a_graph_cell_name_runs_no_shell_command(repo: Path) -> None:
    _with_params(repo, lambda raw: raw["graph"]["cells"].update({INJECTED: {"model": "lightgcn", "modalities": []}}))
    _assert_refused_and_harmless(repo, f"graph@{INJECTED}")


def test_an_ungrounded_ablation_value_runs_no_shell_command(repo: Path) -> None:
    _with_params(repo, lambda raw: raw["ablation"]["ungrounded"].append(INJECTED))
    _assert_refused_and_harmless(repo, f"ablate_ungrounded@{INJECTED}")
