"""Run one DVC stage: validate params.yaml, then execute the stage's notebook through papermill (plus an
HTML export), or call a notebook-less stage's ``run``.

``dvc.yaml`` is the single source of truth for what a stage reads: a stage receives exactly the
``params.yaml`` keys its ``params:`` list declares, as the typed sections of :mod:`vlm4rec.config` holding
only those keys (:func:`stage_params`; a notebook turns its injected dicts into them with :func:`sections`),
so it cannot silently depend on a parameter DVC does not track. The whole file is validated first, so a bad
value stops the stage before any work with a message naming the key. Usage (what ``dvc.yaml`` calls)::

    python -m vlm4rec.stage prepare            # notebook stage (the notebook is the stage's one .ipynb dep)

Notebook-less stages (grid cells, the data fetch) are modules with a ``main`` that calls
:func:`run_stage_function`. Errors about the study's inputs (:class:`vlm4rec.errors.StudyError` and its
subclasses, wherever raised: in this process, in a notebook's kernel or in a Ray task) are printed as one
``ERROR:`` message without a traceback (a notebook's also names the executed notebook that holds it) and
exit with status 1; SIGTERM / SIGINT take the notebook's
kernel down with the runner.
"""
from __future__ import annotations

import argparse
import ast
import copy
import functools
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Collection

import yaml

from vlm4rec.config import KeyTree, StudyParams, UniqueKeyLoader, load_params, restricted, validate_params
from vlm4rec.errors import StudyError
from vlm4rec.stage_lists import check_stage_lists

REPORTS_DIR = Path("reports")
#: Why a notebook's kernel dies without a Python error, most likely first.
KERNEL_DEATH = ("most likely the machine ran out of memory and the system killed it: free memory, or lower the "
                "stage's batch and block sizes (eval.block_size, the stage's batch_size keys) or user sample; "
                "else the process was killed or crashed in native code")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file (``params.yaml``, ``dvc.yaml``); a key given twice is an error, as in DVC."""
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=UniqueKeyLoader) or {}


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


def declared_keys(stage: str, params_file: str | Path = "params.yaml",
                  dvc_file: str | Path = "dvc.yaml") -> list[tuple[str, str]]:
    """(parameter file, dotted key) of every entry of ``stage``'s ``params:`` list.

    An entry ``{other.yaml: [x.y]}`` reads ``x.y`` from ``other.yaml`` (beside ``dvc.yaml``), as DVC does. In a
    cell ``name@key`` of a ``foreach`` stage, ``${item}`` (a list's) or ``${key}`` (a mapping's) in an entry
    stands for the cell's key."""
    base = Path(dvc_file).parent
    cell = stage.partition("@")[2]
    keys: list[tuple[str, str]] = []
    for entry in stage_definition(stage, dvc_file).get("params", []):
        if isinstance(entry, str):
            keys.append((str(params_file), entry.replace("${key}", cell).replace("${item}", cell)))
        else:
            keys += [(str(base / name), key) for name, listed in entry.items() for key in listed]
    return keys


def declared_params(stage: str, params_file: str | Path = "params.yaml",
                    dvc_file: str | Path = "dvc.yaml") -> dict[str, Any]:
    """The subset of the parameter files that ``stage`` declares, nested by top-level key (what a notebook
    stage's parameters cell receives): ``params: [data, eval.ks]`` gives ``{"data": {...}, "eval": {"ks": [...]}}``."""
    selected: dict[str, Any] = {}
    files: dict[str, dict[str, Any]] = {}
    for path, key in declared_keys(stage, params_file, dvc_file):
        if path not in files:
            files[path] = load_yaml(path)
        _assign(selected, key, copy.deepcopy(_lookup(files[path], key, path)))
    return selected


def stage_params(stage: str, params: StudyParams, dvc_file: str | Path = "dvc.yaml") -> StudyParams:
    """``params`` (validated) restricted to the params.yaml keys ``dvc.yaml`` declares for ``stage``: its
    sections hold only those keys, and reading any other one is a :class:`StudyError` naming the key and the
    stage (so that a stage cannot depend on a parameter DVC does not track)."""
    tree: KeyTree = {}
    for path, key in declared_keys(stage, "params.yaml", dvc_file):
        if Path(path) != Path("params.yaml"):
            raise StudyError(f"stage {stage} declares {key} of {path}: typed sections come from params.yaml only")
        _declare(tree, key.split("."))
    return restricted(params, tree, stage)


def _declare(tree: KeyTree, parts: list[str]) -> None:
    """Add a declared key (its parts) to ``tree``; a whole section declared covers every key below it."""
    head, *rest = parts
    if head in tree and tree[head] is None:
        return
    if not rest:
        tree[head] = None
        return
    _declare(tree.setdefault(head, {}), rest)  # type: ignore[arg-type]


def notebook_parameters(stage: str, params_file: str | Path = "params.yaml",
                        dvc_file: str | Path = "dvc.yaml") -> dict[str, Any]:
    """What the runner injects into ``stage``'s notebook: :func:`declared_params`, each section under its
    argument name (:data:`ARGUMENT_NAMES`: ``eval`` as ``evaluation``, so that no notebook shadows the builtin)."""
    return {ARGUMENT_NAMES.get(key, key): value for key, value in declared_params(stage, params_file, dvc_file).items()}


def sections(stage: str, **injected: Any) -> StudyParams:
    """A notebook's parameters as typed sections, in its first code cell: ``p = sections("match",
    evaluation=evaluation, match=match, ...)`` with the dicts of its parameters cell (what the runner injects,
    :func:`notebook_parameters`: the keys ``dvc.yaml`` declares for ``stage``), then ``p.eval.select_metric``.

    The dicts replace their keys in ``params.yaml`` and the whole file is validated with
    :mod:`vlm4rec.config`'s models; the result is :func:`stage_params` (undeclared keys refused). A dict that
    holds a key the stage does not declare, or lacks one it does, is a :class:`StudyError`."""
    injected = {PARAMS_KEYS.get(name, name): value for name, value in injected.items()}
    keys = [key for _, key in declared_keys(stage)]
    given: dict[str, Any] = {}
    for key in keys:
        try:
            _assign(given, key, _lookup(injected, key))
        except KeyError:
            raise StudyError(f"the parameters of stage {stage} lack {key}, which dvc.yaml declares for it") from None
    if given != injected:
        raise StudyError(f"the parameters of stage {stage} hold keys dvc.yaml does not declare for it (declared: "
                         f"{', '.join(keys)})")
    raw = load_yaml("params.yaml")
    for key in keys:
        _assign(raw, key, _lookup(injected, key))
    return stage_params(stage, validate_params(raw))


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


def check_parameters_cell(notebook: Path, injected: Collection[str]) -> None:
    """A notebook runs on the values the runner injects only: it has one cell tagged ``parameters`` (without
    one papermill puts the values before the notebook's own assignments, which then win) and no later cell
    assigns, deletes or changes a name it injects; otherwise a :class:`StudyError` naming the notebook."""
    cells = [cell for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if cell["cell_type"] == "code"]
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise StudyError(f"{notebook} has {len(tagged)} code cells tagged `parameters`, not one: papermill injects "
                         "params.yaml's values after the tagged cell (without one, before the notebook's own "
                         "assignments, which would win); tag the cell that assigns the stage's parameters")
    for number, cell in enumerate(cells[tagged[0] + 1:], start=tagged[0] + 2):
        overridden = sorted(bound_names("".join(cell["source"])) & set(injected))
        if overridden:
            raise StudyError(f"{notebook}: code cell {number} assigns {', '.join(overridden)} after the parameters "
                             "cell, overriding the values params.yaml gives the stage; read them there, change "
                             "them in params.yaml")


def bound_names(source: str) -> set[str]:
    """The names a piece of notebook code assigns, deletes, imports or changes in place (``x[k] = v``,
    ``x.a = v``, ``x += v``); IPython magics and shell lines are skipped."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.Name, ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            while isinstance(node, (ast.Subscript, ast.Attribute)):
                node = node.value
            if isinstance(node, ast.Name):
                names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def run_notebook_stage(stage: str) -> Path:
    """Execute the stage's notebook with its declared params and export it; returns the HTML path. A kernel
    that dies (as an out-of-memory kill does) is a :class:`StudyError` naming the stage, notebook and cause."""
    import papermill
    from nbclient.exceptions import DeadKernelError

    notebook = stage_notebook(stage)
    parameters = notebook_parameters(stage)
    check_parameters_cell(notebook, parameters)
    REPORTS_DIR.mkdir(exist_ok=True)
    executed = REPORTS_DIR / notebook.name
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=parameters,
                                   cwd=str(Path.cwd()), progress_bar=False, log_output=True,
                                   kernel_name="python3")
    except DeadKernelError:
        raise StudyError(f"{stage}: the kernel running {notebook} died ({KERNEL_DEATH}); the executed notebook "
                         f"up to the cell that was running: {executed}") from None
    except papermill.PapermillExecutionError as err:
        message = study_error_message(err.ename, err.evalue)
        if message is None:
            raise
        raise StudyError(f"{stage}: {message}\n  log (the executed notebook, with the traceback): {executed}") \
            from None
    return export_html(executed)


def study_error_message(ename: str, evalue: str) -> str | None:
    """The message of a notebook's error when it is a :class:`StudyError` (also one a Ray task raised,
    ``RayTaskError(DataFormatError)``, whose value ends with the original ``Name: message`` line); None for
    any other error, which keeps its traceback."""
    wrapped = re.fullmatch(r"\w+\((\w+)\)", ename)
    name = wrapped.group(1) if wrapped else ename
    if name not in study_error_names():
        return None
    if wrapped:
        lines = [line for line in evalue.splitlines() if line.startswith(f"{name}: ")]
        return lines[-1].removeprefix(f"{name}: ") if lines else evalue
    return evalue


@functools.cache
def study_error_names() -> frozenset[str]:
    """Names of every :class:`StudyError` subclass defined in the ``vlm4rec`` package, found in its source.

    A notebook's error reaches the runner as a class name only, and the runner has not imported the module
    that defines it (a grounding or data-format error), so the class tree is read from the source files'
    ``class Name(Base, ...)`` statements instead of ``__subclasses__``.
    """
    bases: dict[str, set[str]] = {}
    for source in Path(__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(
                    base.id if isinstance(base, ast.Name) else base.attr
                    for base in node.bases if isinstance(base, (ast.Name, ast.Attribute)))
    names = {StudyError.__name__}
    while grown := {name for name, parents in bases.items() if parents & names} - names:
        names |= grown
    return frozenset(names)


#: params.yaml sections whose name is a Python builtin, and the argument name they take in stage functions.
ARGUMENT_NAMES = {"eval": "evaluation"}
PARAMS_KEYS = {argument: key for key, argument in ARGUMENT_NAMES.items()}


def run_stage_function(stage: str, function: Callable[..., Any], **extra: Any) -> Any:
    """Call a notebook-less stage's ``function`` with its declared sections (:func:`stage_params` of the
    validated params.yaml; keyword arguments named by their top-level key, renamed by :data:`ARGUMENT_NAMES`)
    plus ``extra``."""
    study = load_params()
    check_stage_lists(study)
    params = stage_params(stage, study)
    return function(**{ARGUMENT_NAMES.get(key, key): getattr(params, key) for key in params.model_fields_set},
                    **extra)


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
        cause = getattr(err, "cause", None)  # a StudyError raised in a Ray task: the original, not Ray's traceback
        sys.stderr.write(f"ERROR: {cause if isinstance(cause, StudyError) else err}\n")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("stage", help="stage name in dvc.yaml")
    args = parser.parse_args(argv)
    _terminate_on_signals()

    def body() -> None:
        check_stage_lists(load_params())
        print(run_notebook_stage(args.stage))

    exit_on_study_error(body)


if __name__ == "__main__":
    main()
