"""The vlm4rec files each DVC stage runs, and a rewrite of dvc.yaml's per-stage module lists from them.

A stage runs its notebook's code cells through the runner (``python -m vlm4rec.stage``) or a module's
``main`` (``python -m vlm4rec.pipeline.X``); what it runs is the transitive closure of the ``vlm4rec``
modules imported there (every ``import`` statement, function-level ones included, and the parent
packages' ``__init__``). ``--write`` replaces each stage's ``vlm4rec/`` deps by that closure, in place:
comments, the other deps and the order of the file stay; a declared ``vlm4rec/`` folder that still
covers a file the stage runs stays and stands for the files under it; the list is sorted.

    python tools/stage_deps.py           # exit 1 and name the stages whose lists are not current
    python tools/stage_deps.py --write   # rewrite them
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RUNNER = "vlm4rec.stage"
COMMAND = "python tools/stage_deps.py --write"


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
    defined = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in defined.items()}


def is_code_dep(dep: str) -> bool:
    return dep.startswith("vlm4rec/")


def code_deps(stage: dict, root: Path = REPO) -> list[str]:
    """The ``vlm4rec/`` deps the stage must declare: its declared folders that still cover a file it runs,
    then every file it runs outside them, sorted."""
    runs = stage_code_files(stage, root)
    folders = [d for d in map(str, stage["deps"])
               if is_code_dep(d) and not d.endswith(".py") and any(covered(p, [d]) for p in runs)]
    return sorted(folders + [p for p in runs if not covered(p, folders)])


def rewritten(text: str, wanted: dict[str, list[str]]) -> str:
    """``text`` (dvc.yaml) with each stage's ``vlm4rec/`` dep lines replaced by ``wanted[stage]``, written
    where the first of them stood (after the other deps if the stage had none)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = deps_indent = None
    item_indent = ""
    pending: list[str] | None = None  # the stage's code deps, until written

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            out.extend(f"{item_indent}- {dep}\n" for dep in pending)
            pending = None

    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if match := re.match(r"^  (\w[\w-]*):\s*$", line):
            flush()
            stage, deps_indent = match.group(1), None
            out.append(line)
            continue
        if deps_indent is not None:
            if stripped and not stripped.startswith("#") and indent <= deps_indent and not stripped.startswith("- "):
                flush()
                deps_indent = None
            elif stripped.startswith("- ") and is_code_dep(stripped[2:].strip()):
                item_indent = line[:indent]
                flush()
                continue
            elif stripped.startswith("- "):
                item_indent = line[:indent]
        if stripped == "deps:" and stage in wanted:
            deps_indent, pending = indent, list(wanted[stage])
        out.append(line)
    flush()
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's vlm4rec deps in place")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    path = args.root / "dvc.yaml"
    text = path.read_text()
    wanted = {name: code_deps(stage, args.root) for name, stage in stages(args.root).items()}
    new = rewritten(text, wanted)
    stale = [name for name, stage in stages(args.root).items()
             if [d for d in map(str, stage["deps"]) if is_code_dep(d)] != wanted[name]]
    if args.write:
        path.write_text(new)
        print(f"rewrote the vlm4rec deps of {stale}" if stale else "dvc.yaml is current")
        return 0
    if stale:
        print(f"the vlm4rec deps of {stale} are not current: run {COMMAND}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
