"""The one rule for a name from params.yaml that becomes a DVC stage name, a file or folder name, or part of a
stage's command: graph cells, ablation matrix values, representations, methods and result names.

A name holds letters, digits, ``_``, ``.`` and ``-``, starts with a letter, a digit or ``_`` (so it is never
``.`` or ``..``, a hidden file or a command-line option) and is at most :data:`MAX_LENGTH` characters: no
``/``, whitespace, quote or shell metacharacter can reach a path or a shell. Checking a name is not enough
where DVC interpolates params.yaml into dvc.yaml (it removes a stage's outputs and hands its command to a
shell before any code of ours runs): there the lists are written into dvc.yaml by
:mod:`vlm4rec.stage_lists`, which applies this rule first.
"""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MAX_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a stage, file or command name; None when it can."""
    if not _NAME.fullmatch(name):
        return (f"{name!r} may hold only letters, digits, '_', '.' and '-', and must start with a letter, a digit "
                "or '_' (it becomes a DVC stage name, a file name and part of a command)")
    if len(name) > MAX_LENGTH:
        return f"{name[:20]!r}... is {len(name)} characters long, more than {MAX_LENGTH}"
    return None


def checked_name(name: str) -> str:
    """A name that becomes a stage, file or command name (``graph.cells``' keys, the representations of
    ``match``, ``robustness``, ``fusion``, ``cold_start.graph_cells`` and graph cells' modalities,
    ``ablation.ungrounded``) holds only letters, digits, ``_``, ``.`` and ``-``, starts with a letter, a digit
    or ``_`` and has at most 64 characters."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


#: A params.yaml string that becomes a stage, file or command name (refused unless :func:`name_problem` is None).
SafeName = Annotated[str, AfterValidator(checked_name)]
