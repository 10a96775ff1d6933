"""Every DVC stage declares every vlm4rec file it runs, so that editing a module re-runs every stage that
imports it (and a report never mixes numbers of two versions of the code).

A stage runs its notebook's code cells through the runner (``python -m vlm4rec.stage``) or a module's
``main`` (``python -m vlm4rec.pipeline.X``); what it runs is the transitive closure of the ``vlm4rec``
modules imported there (every ``import`` statement, function-level ones included, and the parent
packages' ``__init__``). Each file of the closure must be a declared dependency or lie in a declared
folder. The e2e test (tests/test_pipeline.py) checks the same closure against ``dvc status`` on a copy.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNNER = "vlm4rec.stage"


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file that ``import name`` executes (a package's ``__init__.py``), or None if not in the repo."""
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_modules(source: str, root: Path = REPO) -> set[str]:
    """The vlm4rec modules a piece of code imports (``from a.b import c`` may import module ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "vlm4rec" and module_file(name, root)}


def closure(modules: set[str], root: Path = REPO) -> set[str]:
    """Repository-relative paths of every file the modules execute on import, transitively."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imported_modules(path.read_text(), root)
    return {path.relative_to(root).as_posix() for path in seen}


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


def stage_entry_modules(stage: dict, root: Path = REPO) -> set[str]:
    """The modules a stage's command runs: the runner and its notebook's imports, or ``python -m`` module."""
    module = re.match(r"python -m ([\w.]+)", stage["cmd"]).group(1)
    if module != RUNNER:
        return {module}
    notebooks = [d for d in stage["deps"] if str(d).endswith(".ipynb")]
    return {RUNNER} | imported_modules(notebook_code(root / notebooks[0]), root)


def stage_code_files(stage: dict, root: Path = REPO) -> set[str]:
    """Every vlm4rec file the stage runs."""
    return closure(stage_entry_modules(stage, root), root)


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def stages(root: Path = REPO) -> dict[str, dict]:
    """Every stage of dvc.yaml; a ``foreach`` stage by its template."""
    return {name: stage.get("do", stage) for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items()}


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_stage_declares_every_vlm4rec_file_it_runs(name: str) -> None:
    stage = stages()[name]
    deps = [str(d) for d in stage["deps"]]
    missing = sorted(path for path in stage_code_files(stage) if not covered(path, deps))
    assert not missing, f"stage {name} runs {missing} without declaring them in dvc.yaml"


@pytest.mark.parametrize("name", sorted(stages()))
def test_no_stage_depends_on_a_raw_data_folder(name: str) -> None:
    """Raw files reach the study only through the fetch stage's manifest (data/raw/source.json): a stage
    that depended on, say, the MovieLens folder would fail, or go stale, with another data.source."""
    outside = [d for d in stages()[name].get("deps", [])
               if str(d).startswith(("..", "/", "${data.")) or "://" in str(d)]
    assert not outside, f"stage {name} depends on {outside}"


def test_prepare_depends_on_the_source_manifest_that_fetch_writes() -> None:
    fetch, prepare = stages()["fetch"], stages()["prepare"]
    assert fetch.get("always_changed") is True
    assert any(next(iter(out)) == "data/raw/source.json" for out in fetch["outs"] if isinstance(out, dict))
    assert "data/raw/source.json" in prepare["deps"]


def test_the_closure_follows_function_level_imports_and_parent_packages(tmp_path: Path) -> None:
    package = tmp_path / "vlm4rec"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from vlm4rec import a\n")
    (package / "a.py").write_text("def f():\n    from vlm4rec.b import g\n")
    (package / "b.py").write_text("import numpy\n")
    (package / "c.py").write_text("")
    assert closure({"vlm4rec.sub"}, tmp_path) == {"vlm4rec/__init__.py", "vlm4rec/sub/__init__.py",
                                                    "vlm4rec/a.py", "vlm4rec/b.py"}


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_declared_vlm4rec_file_is_one_the_stage_runs(name: str) -> None:
    """Declarations are exact: a module a stage no longer imports must leave its deps (else editing it
    would re-run the stage for nothing)."""
    stage = stages()[name]
    runs = stage_code_files(stage)
    declared = [str(d) for d in stage["deps"] if str(d).startswith("vlm4rec/")]
    extra = [d for d in declared if d.endswith(".py") and d not in runs]
    empty_folders = [d for d in declared if not d.endswith(".py") and not any(covered(p, [d]) for p in runs)]
    assert not extra + empty_folders, f"stage {name} declares {extra + empty_folders} but does not run them"
