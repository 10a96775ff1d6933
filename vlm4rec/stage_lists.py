"""dvc.yaml's ``foreach`` / ``matrix`` lists, written from params.yaml by this module, never interpolated.

DVC would interpolate ``foreach: ${graph.cells}`` itself, but it does so before any code of ours runs: it
makes the stage ``graph@<name>`` from any name, removes its outputs (``data/results/graph/..`` is
``data/results``) and hands its command to a shell (``graph@x;touch PWNED;echo``). So the names of the
generated stages are literal lists in dvc.yaml, written here from the validated params.yaml (every name
passes :mod:`vlm4rec.names`): a name params.yaml gains is no stage until this command writes it, and a
dangerous one is refused before it is written. Every stage checks that the lists are current
(:func:`check_stage_lists`) and names the command otherwise::

    python -m vlm4rec.stage_lists           # exit 1 and name the lists that are not current
    python -m vlm4rec.stage_lists --write   # rewrite them from params.yaml
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from vlm4rec.config import StudyParams, load_params
from vlm4rec.errors import StudyError

COMMAND = "python -m vlm4rec.stage_lists --write"
#: (stage, its foreach or matrix key) -> the params.yaml list (or mapping, by its keys) it takes.
LISTS: dict[tuple[str, str], str] = {
    ("graph", "foreach"): "graph.cells",
    ("ablate_grounded", "representation"): "ablation.grounded",
    ("ablate_grounded", "arm"): "ablation.arms",
    ("ablate_ungrounded", "representation"): "ablation.ungrounded",
}


def wanted_lists(params: StudyParams) -> dict[tuple[str, str], list[str]]:
    """What each generated list must hold: its params.yaml list, in order."""
    wanted = {}
    for target, dotted in LISTS.items():
        value: Any = params
        for part in dotted.split("."):
            value = getattr(value, part)
        wanted[target] = [str(name) for name in value]
    return wanted


def declared_lists(dvc_file: str | Path = "dvc.yaml") -> dict[tuple[str, str], Any]:
    """The lists dvc.yaml holds for the generated stages it defines (a stage it lacks is left out)."""
    stages = yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8"))["stages"]
    declared = {}
    for stage, key in LISTS:
        if stage in stages:
            definition = stages[stage]
            declared[(stage, key)] = definition.get(key, definition.get("matrix", {}).get(key))
    return declared


def stale_lists(params: StudyParams, dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """One line per generated list of dvc.yaml whose names differ from params.yaml's (in any order: the order
    changes no stage)."""
    wanted = wanted_lists(params)
    return [f"{stage}'s {key} is {value} in {dvc_file}, params.yaml {LISTS[(stage, key)]} gives "
            f"{wanted[(stage, key)]}"
            for (stage, key), value in declared_lists(dvc_file).items()
            if not isinstance(value, list) or sorted(map(str, value)) != sorted(wanted[(stage, key)])]


def check_stage_lists(params: StudyParams, dvc_file: str | Path = "dvc.yaml") -> None:
    """A :class:`StudyError` naming the command to run when a generated list of dvc.yaml is not current."""
    stale = stale_lists(params, dvc_file)
    if stale:
        raise StudyError(f"dvc.yaml's stage lists are not those of params.yaml ({'; '.join(stale)}): run "
                         f"`{COMMAND}` (DVC takes the graph cells and ablation values from dvc.yaml, never "
                         "straight from params.yaml: README, 'Changing the graph cells or the ablation grid')")


def rewritten(text: str, wanted: dict[tuple[str, str], list[str]]) -> str:
    """``text`` (dvc.yaml) with the line of each generated list replaced by ``wanted``'s, in flow style;
    comments and everything else stay."""
    lines = text.splitlines(keepends=True)
    stage = None
    for number, line in enumerate(lines):
        if match := re.match(r"^  (\w[\w-]*):\s*$", line):
            stage = match.group(1)
        elif (match := re.match(r"^(\s+)(\w+):\s*\S", line)) and (stage, match.group(2)) in wanted:
            names = yaml.safe_dump(wanted[(stage, match.group(2))], default_flow_style=True, width=sys.maxsize)
            lines[number] = f"{match.group(1)}{match.group(2)}: {names.strip()}\n"
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's lists from params.yaml")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: the current folder)")
    args = parser.parse_args(argv)
    dvc_file = args.root / "dvc.yaml"
    try:
        params = load_params(args.root / "params.yaml")
    except StudyError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    stale = stale_lists(params, dvc_file)
    if args.write:
        dvc_file.write_text(rewritten(dvc_file.read_text(encoding="utf-8"), wanted_lists(params)), encoding="utf-8")
        print(f"rewrote {len(stale)} list(s) of {dvc_file}" if stale else f"{dvc_file} is current")
        return 0
    for line in stale:
        print(f"{line}: run {COMMAND}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
