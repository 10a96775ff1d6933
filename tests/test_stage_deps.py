"""Every DVC stage declares exactly the vlm4rec files it runs, so that editing a module re-runs every stage
that imports it (and a report never mixes numbers of two versions of the code), and no other.

What a stage runs is the import closure that ``tools/stage_deps.py`` computes (the runner and its
notebook's imports, or a ``python -m`` module, transitively, function-level imports and parent packages'
``__init__`` included); ``python tools/stage_deps.py --write`` rewrites dvc.yaml's lists from it. The e2e
test (tests/test_pipeline.py) checks the same closure against ``dvc status`` on a copy.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from stage_deps import COMMAND, REPO, closure, code_deps, imported_modules, is_code_dep, main, stages


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_stage_declares_exactly_the_vlm4rec_files_it_runs(name: str) -> None:
    """Declarations are exact and current: a missing module would leave the stage stale after its edit, an
    extra one would re-run the stage for nothing."""
    stage = stages()[name]
    declared = [str(d) for d in stage["deps"] if is_code_dep(str(d))]
    assert declared == code_deps(stage), f"stage {name}'s vlm4rec deps are not current: run {COMMAND}"


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


DVC_YAML = """\
stages:
  # a comment that stays
  fetch:
    cmd: python -m vlm4rec.pipeline.fetch
    deps:
{fetch}
    params:
      - data
  graph:
    foreach: [a, b]
    do:
      cmd: python -m vlm4rec.b ${{key}}
      deps:
        - data/prepared
{graph}
      outs:
        - out/${{key}}
"""


def deps_lines(indent: int, deps: list[str]) -> str:
    return "\n".join(" " * indent + "- " + dep for dep in deps)


STALE = DVC_YAML.format(
    fetch=deps_lines(6, ["vlm4rec/unused.py", "vlm4rec/__init__.py", "data/raw  # kept", "vlm4rec/sub"]),
    graph="").replace("\n\n", "\n")
CURRENT = DVC_YAML.format(
    fetch=deps_lines(6, ["vlm4rec/__init__.py", "vlm4rec/a.py", "vlm4rec/b.py", "vlm4rec/pipeline/__init__.py",
                         "vlm4rec/pipeline/fetch.py", "vlm4rec/sub", "data/raw  # kept"]),
    graph=deps_lines(8, ["vlm4rec/__init__.py", "vlm4rec/b.py"]))


def test_write_replaces_stale_lists_in_place_and_then_finds_them_current(tmp_path: Path) -> None:
    """Missing, unused and unordered modules are fixed where the list stood; comments, other deps and a
    declared folder that still covers an imported module stay; a second run changes nothing."""
    package = tmp_path / "vlm4rec"
    for folder in (package / "pipeline", package / "sub"):
        folder.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pipeline" / "__init__.py").write_text("")
    (package / "pipeline" / "fetch.py").write_text("from vlm4rec.sub import s\nimport vlm4rec.a\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "s.py").write_text("")
    (package / "a.py").write_text("from vlm4rec import b\n")
    (package / "b.py").write_text("")
    (package / "unused.py").write_text("")
    (tmp_path / "dvc.yaml").write_text(STALE)
    assert main(["--root", str(tmp_path)]) == 1
    assert main(["--root", str(tmp_path), "--write"]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == CURRENT
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--write"]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == CURRENT


#: Modules of vlm4rec/pipeline that several stages share and that are no stage themselves (no ``run``).
PIPELINE_HELPERS = {"__init__", "outputs", "profiles", "source_manifest", "stage_metrics", "study_files", "descriptions",
                    "new_item_data", "new_item_tables"}


def pipeline_imports(path: Path) -> set[str]:
    """The ``vlm4rec.pipeline`` modules a file imports (``from vlm4rec.pipeline import x`` names module x)."""
    return {name.removeprefix("vlm4rec.pipeline.") for name in imported_modules(path.read_text())
            if name.startswith("vlm4rec.pipeline.")}


def test_no_stage_module_imports_another_and_the_benchmarks_import_no_stage() -> None:
    """What stages share lives in the domain modules or in the pipeline's helpers, so that an edit of one
    stage's glue re-runs that stage (and what reads its outputs), not another."""
    pipeline = REPO / "vlm4rec" / "pipeline"
    helpers = [pipeline / f"{name}.py" for name in PIPELINE_HELPERS]
    assert all(path.exists() and "\ndef run(" not in path.read_text() for path in helpers)
    for path in [*pipeline.glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        stages_imported = pipeline_imports(path) - PIPELINE_HELPERS - {path.stem}
        assert not stages_imported, f"{path.relative_to(REPO)} imports the stage module(s) {sorted(stages_imported)}"
    assert "vlm4rec/pipeline/report.py" not in code_deps(stages()["cold_start"])
