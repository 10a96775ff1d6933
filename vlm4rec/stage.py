"""Run one DVC stage: its notebook through papermill (plus an HTML export), or one grid cell.

``dvc.yaml`` is the single source of truth for what a stage reads: the runner passes a stage exactly the
``params.yaml`` keys its ``params:`` list declares, nothing else, so a stage cannot silently depend on a
parameter DVC does not track. Usage (what ``dvc.yaml`` calls)::

    python -m vlm4rec.stage prepare                        # notebook stage (notebook from the stage's deps)
    python -m vlm4rec.stage ablate_ungrounded --cell representation=title aggregation=mean cap=all
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

REPORTS_DIR = Path("reports")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file (``params.yaml``, ``dvc.yaml``)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def stage_definition(stage: str, dvc_file: str | Path = "dvc.yaml") -> dict[str, Any]:
    """The ``dvc.yaml`` entry of ``stage`` (the template of a ``matrix`` / ``foreach`` stage)."""
    stages = load_yaml(dvc_file)["stages"]
    if stage not in stages:
        raise KeyError(f"no stage {stage!r} in {dvc_file}; stages: {sorted(stages)}")
    definition = stages[stage]
    return definition.get("do", definition)


def _lookup(params: dict[str, Any], dotted: str, source: str | Path = "params.yaml") -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{source} has no key {dotted!r}")
        node = node[part]
    return node


def _assign(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def declared_params(stage: str, params_file: str | Path = "params.yaml",
                    dvc_file: str | Path = "dvc.yaml") -> dict[str, Any]:
    """The subset of the parameter files that ``stage`` declares, nested by top-level key.

    ``params: [data, eval.ks]`` gives ``{"data": {...}, "eval": {"ks": [...]}}``; an entry
    ``{other.yaml: [x.y]}`` reads ``x.y`` from ``other.yaml`` (beside ``dvc.yaml``), as DVC does.
    """
    base = Path(dvc_file).parent
    selected: dict[str, Any] = {}
    for entry in stage_definition(stage, dvc_file).get("params", []):
        sources = {str(params_file): [entry]} if isinstance(entry, str) else {
            str(base / name): keys for name, keys in entry.items()}
        for path, keys in sources.items():
            values = load_yaml(path)
            for key in keys:
                _assign(selected, key, _lookup(values, key, path))
    return selected


def stage_notebook(stage: str, dvc_file: str | Path = "dvc.yaml") -> Path:
    """The notebook a stage executes: its one ``notebooks/*.ipynb`` dependency."""
    deps = stage_definition(stage, dvc_file).get("deps", [])
    notebooks = [Path(d) for d in deps if str(d).startswith("notebooks/") and str(d).endswith(".ipynb")]
    if len(notebooks) != 1:
        raise ValueError(f"stage {stage!r} must depend on exactly one notebook, found {notebooks}")
    return notebooks[0]


def export_html(executed: Path) -> Path:
    """Write an HTML rendering beside an executed notebook (tables and figures included)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def run_notebook_stage(stage: str, extra: dict[str, Any] | None = None) -> Path:
    """Execute the stage's notebook with its declared params and export it; returns the HTML path."""
    import papermill

    notebook = stage_notebook(stage)
    parameters = declared_params(stage) | (extra or {})
    REPORTS_DIR.mkdir(exist_ok=True)
    executed = REPORTS_DIR / notebook.name
    papermill.execute_notebook(str(notebook), str(executed), parameters=parameters,
                               cwd=str(Path.cwd()), progress_bar=False, log_output=True,
                               kernel_name="python3")
    return export_html(executed)


def run_cell_stage(stage: str, item: dict[str, Any]) -> None:
    """Run one cell of a grid stage (no notebook: a grid has dozens of cells, a kernel each would
    cost more than the cell); the stage's own notebook summarises all cells afterwards."""
    from vlm4rec.pipeline import ablate

    ablate.run_cell(stage, declared_params(stage), item)


def parse_cell(pairs: list[str]) -> dict[str, Any]:
    """``["cap=20", "arm=image_only"]`` -> ``{"cap": 20, "arm": "image_only"}``."""
    cell = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"grid cell entries are KEY=VALUE, got {pair!r}")
        cell[key] = yaml.safe_load(value)
    return cell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("stage", help="stage name in dvc.yaml")
    parser.add_argument("--cell", nargs="+", metavar="KEY=VALUE",
                        help="one cell of a matrix stage; values are parsed as YAML scalars")
    args = parser.parse_args(argv)
    if args.cell:
        run_cell_stage(args.stage, parse_cell(args.cell))
    else:
        print(run_notebook_stage(args.stage))


if __name__ == "__main__":
    main()
