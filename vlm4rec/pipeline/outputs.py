"""Where the stages write, and how they record what a run cost.

Every stage output lives under one of these folders (declared as ``outs`` / ``metrics`` / ``plots`` in
``dvc.yaml``). Metrics JSON is written with sorted keys so that equal content gives equal bytes; wall
times and memory go under a ``cost`` key of the metrics, never into result data files.
"""
from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vlm4rec.stage_outputs import read_output

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
GROUNDING_DIR = Path("data/grounding")
EMBEDDINGS_DIR = Path("data/embeddings")
RESULTS_DIR = Path("data/results")
ABLATIONS_DIR = Path("data/ablations")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timed(costs: dict[str, Any], name: str) -> Iterator[None]:
    """Record the wall time of a block under ``costs[name + "_s"]``."""
    start = time.perf_counter()
    yield
    costs[f"{name}_s"] = round(time.perf_counter() - start, 3)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a metrics / summary JSON (sorted keys, numpy scalars converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_to_builtin) + "\n")


def read_metrics(name: str) -> dict[str, Any]:
    """A stage's metrics JSON, ``metrics/<name>.json`` (``name`` may name a folder: ``graph/lightgcn``): the
    one way stage outputs' metrics are read back; a missing or unparsable one is a StudyError naming the file
    and its stage."""
    return read_output(METRICS_DIR / f"{name}.json", lambda path: json.loads(path.read_text()))


def chosen_ease_l2() -> float:
    """The EASE^R L2 penalty the match stage chose on validation (its ``chosen.json``)."""
    return read_output(RESULTS_DIR / "match" / "ease" / "chosen.json",
                       lambda path: json.loads(path.read_text())["config"]["l2"])


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
