"""Run one DVC stage: validate params.yaml, then execute the stage's notebook through papermill (plus an
HTML export), or call a notebook-less stage's ``run``.

``dvc.yaml`` is the single source of truth for what a stage reads: a stage receives exactly the
``params.yaml`` keys its ``params:`` list declares, so it cannot silently depend on a parameter DVC does
not track. The whole file is validated against :mod:`vlm4rec.config` first, so a bad value stops the
stage before any work with a message naming the key. Usage (what ``dvc.yaml`` calls)::

    python -m vlm4rec.stage prepare            # notebook stage (the notebook is the stage's one .ipynb dep)

Notebook-less stages (grid cells, the data fetch) are modules with a ``main`` that calls
:func:`run_stage_function`. Errors about the study's inputs (:class:`vlm4rec.errors.StudyError`) are
printed as one message without a traceback and exit with status 1; SIGTERM / SIGINT take the notebook's
kernel down with the runner.
"""
from __future__ import annotations

import argparse
import copy
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from vlm4rec.config import load_params
from vlm4rec.errors import StudyError

REPORTS_DIR = Path("reports")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file (``params.yaml``, ``dvc.yaml``)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def stage_definition(stage: str, dvc_file: str | Path = "dvc.yaml") -> dict[str, Any]:
    """The ``dvc.yaml`` entry of ``stage``; for a cell of a ``matrix`` / ``foreach`` stage (``name@cell``),
    its template."""
    name = stage.partition("@")[0]
    stages = load_yaml(dvc_file)["stages"]
    if name not in stages:
        raise KeyError(f"no stage {name!r} in {dvc_file}; stages: {sorted(stages)}")
    definition = stages[name]
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
    ``{other.yaml: [x.y]}`` reads ``x.y`` from ``other.yaml`` (beside ``dvc.yaml``), as DVC does. In a cell
    ``name@key`` of a ``foreach`` stage, ``${key}`` in an entry stands for the cell's key.
    """
    base = Path(dvc_file).parent
    cell = stage.partition("@")[2]
    selected: dict[str, Any] = {}
    for entry in stage_definition(stage, dvc_file).get("params", []):
        entry = entry.replace("${key}", cell) if isinstance(entry, str) else entry
        sources = {str(params_file): [entry]} if isinstance(entry, str) else {
            str(base / name): keys for name, keys in entry.items()}
        for path, keys in sources.items():
            values = load_yaml(path)
            for key in keys:
                _assign(selected, key, copy.deepcopy(_lookup(values, key, path)))
    return selected


def stage_notebook(stage: str, dvc_file: str | Path = "dvc.yaml") -> Path:
    """The notebook a stage executes: its one ``notebooks/*.ipynb`` dependency."""
    deps = stage_definition(stage, dvc_file).get("deps", [])
    notebooks = [Path(d) for d in deps if str(d).startswith("notebooks/") and str(d).endswith(".ipynb")]
    if len(notebooks) != 1:
        raise ValueError(f"stage {stage!r} must depend on exactly one notebook, found {notebooks}")
    return notebooks[0]


def export_html(executed: Path) -> Path:
    """An HTML rendering beside an executed notebook for readers: prose, tables and figures.

    Code is left out (the executed ``.ipynb`` keeps it) and so are stderr streams (progress bars and
    warnings, which go to the console and can print machine paths)."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs
                            if not (out.get("output_type") == "stream" and out.get("name") == "stderr")]
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook)
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def run_notebook_stage(stage: str) -> Path:
    """Execute the stage's notebook with its declared params and export it; returns the HTML path."""
    import papermill

    notebook = stage_notebook(stage)
    REPORTS_DIR.mkdir(exist_ok=True)
    executed = REPORTS_DIR / notebook.name
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=declared_params(stage),
                                   cwd=str(Path.cwd()), progress_bar=False, log_output=True,
                                   kernel_name="python3")
    except papermill.PapermillExecutionError as err:
        if err.ename in _study_error_names():
            raise StudyError(f"{stage}: {err.evalue}") from None
        raise
    return export_html(executed)


def _study_error_names() -> set[str]:
    """Class names of every StudyError subclass (how a notebook's error is recognised after papermill)."""
    names, todo = set(), [StudyError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def run_stage_function(stage: str, function: Callable[..., Any], **extra: Any) -> Any:
    """Call a notebook-less stage's ``function`` with its declared params (as keyword arguments, one per
    top-level params.yaml key) plus ``extra``, after validating params.yaml."""
    load_params()
    return function(**declared_params(stage), **extra)


def _terminate_on_signals() -> None:
    """Turn SIGTERM / SIGINT into an exception, so that papermill shuts its kernel down on the way out."""
    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"stage stopped by signal {signal.Signals(signum).name}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def exit_on_study_error(body: Callable[[], Any]) -> None:
    """Run ``body``; a :class:`StudyError` becomes its message on stderr and exit status 1."""
    try:
        body()
    except StudyError as err:
        sys.stderr.write(f"ERROR: {err}\n")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("stage", help="stage name in dvc.yaml")
    args = parser.parse_args(argv)
    _terminate_on_signals()

    def body() -> None:
        load_params()
        print(run_notebook_stage(args.stage))

    exit_on_study_error(body)


if __name__ == "__main__":
    main()
