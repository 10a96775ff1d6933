"""Reading a file another stage wrote: a missing, truncated or corrupt one is a :class:`StudyError` that names
the file and the stage that writes it (found in dvc.yaml), instead of a traceback from deep inside a reader.

    with stage_output(path):
        table = pd.read_parquet(path)
    table = read_output(path, pd.read_parquet)  # the same
"""
from __future__ import annotations

import itertools
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from vlm4rec.errors import StudyError

#: What readers raise on a file that is truncated or not what its writer wrote (pyarrow's and json's errors
#: are ValueErrors; numpy raises ValueError, EOFError or an unpickling error; a JSON without an expected key,
#: KeyError or TypeError).
UNREADABLE = (ValueError, EOFError, KeyError, TypeError, pickle.UnpicklingError, OSError)
T = TypeVar("T")


@contextmanager
def stage_output(path: str | Path, dvc_file: str | Path = "dvc.yaml") -> Iterator[None]:
    """Read ``path`` in the block; a missing or unreadable file stops with a message naming it and its stage."""
    try:
        yield
    except FileNotFoundError:
        raise StudyError(f"{path} is missing: {remedy(path, 'first', dvc_file)}") from None
    except UNREADABLE as err:
        raise StudyError(f"{path} cannot be read, it is truncated or corrupt ({type(err).__name__}: {err}): "
                         f"{remedy(path, 'again', dvc_file)}") from None


def read_output(path: str | Path, reader: Callable[[Path], T]) -> T:
    """``reader(path)`` under :func:`stage_output`."""
    with stage_output(path):
        return reader(Path(path))


def remedy(path: str | Path, when: str, dvc_file: str | Path = "dvc.yaml") -> str:
    """``run `dvc repro` or the <stage> stage <when>`` for the stage that writes ``path``."""
    stage = producing_stage(path, dvc_file)
    return f"run `dvc repro` or the {stage} stage {when}" if stage else f"run `dvc repro` {when}"


def producing_stage(path: str | Path, dvc_file: str | Path = "dvc.yaml") -> str | None:
    """The dvc.yaml stage (``graph@lightgcn`` for a cell) whose declared output holds ``path``; the deepest
    one if outputs nest, None when none does (or dvc.yaml cannot be read)."""
    target = Path(path).as_posix()
    try:
        outputs = list(stage_outputs(yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8"))["stages"]))
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    holding = [(out, stage) for stage, out in outputs if target == out or target.startswith(out.rstrip("/") + "/")]
    return max(holding, key=lambda pair: len(pair[0]))[1] if holding else None


def stage_outputs(stages: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(stage name, declared out / metrics / plots path) of every stage, foreach and matrix cells expanded
    from dvc.yaml's literal lists (a path holding a params.yaml interpolation is left as written)."""
    for name, definition in stages.items():
        for cell, template in _cells(name, definition):
            for kind in ("outs", "metrics", "plots"):
                for entry in template.get(kind, []):
                    yield cell, next(iter(entry)) if isinstance(entry, dict) else str(entry)


def _cells(name: str, definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(definition.get("foreach"), list):
        for item in definition["foreach"]:
            yield f"{name}@{item}", _substituted(definition["do"], {"item": str(item)})
    elif isinstance(definition.get("matrix"), dict) and all(isinstance(v, list) for v in definition["matrix"].values()):
        keys = list(definition["matrix"])
        for values in itertools.product(*definition["matrix"].values()):
            names = dict(zip((f"item.{key}" for key in keys), map(str, values)))
            yield f"{name}@{'-'.join(map(str, values))}", _substituted(definition, names)
    else:
        yield name, definition


def _substituted(template: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """``template``'s output lists with ``${name}`` replaced by ``values[name]``."""
    def fill(text: str) -> str:
        return re.sub(r"\$\{([\w.]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)

    return {kind: [{fill(next(iter(e))): next(iter(e.values()))} if isinstance(e, dict) else fill(str(e))
                   for e in template.get(kind, [])] for kind in ("outs", "metrics", "plots")}
