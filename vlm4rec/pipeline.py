"""The thin layer the stage notebooks call: parameters in, files out, costs recorded.

Every function here reads the parameter dicts a stage declares (see :mod:`vlm4rec.stage`) and the data
files earlier stages wrote, calls the tested modules, and writes data files and metrics JSON. Notebooks
show what these functions return; nothing a later stage reads is produced inside a notebook.
"""
from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vlm4rec.data import PreparedData, RawDataset, dataset_counts, load_prepared, prepare, save_prepared
from vlm4rec.splits import SplitConfig

PREPARED_DIR = Path("data/prepared")
GROUNDING_DIR = Path("data/grounding")
EMBEDDINGS_DIR = Path("data/embeddings")
RESULTS_DIR = Path("data/results")
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


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- prepare -------------------------------------------------------------------------------------

def load_raw(data_params: dict[str, Any]) -> RawDataset:
    """The source named by ``data.source``, read with that source's own keys."""
    from vlm4rec.datasets import load_source

    source = data_params["source"]
    keys = {k: v for k, v in (data_params.get(source) or {}).items() if v is not None}
    return load_source(source, **keys)


def sample_users(raw: RawDataset, n_users: int | None, seed: int) -> RawDataset:
    """A seeded sample of ``n_users`` source users (all when None), for smoke runs and tests."""
    if n_users is None:
        return raw
    users = np.sort(raw.interactions["user_id"].astype(str).unique())
    if n_users >= len(users):
        return raw
    keep = set(np.random.default_rng(seed).choice(users, size=n_users, replace=False))
    inter = raw.interactions[raw.interactions["user_id"].astype(str).isin(keep)]
    return RawDataset(name=raw.name, interactions=inter, items=raw.items, features=raw.features,
                      counts=raw.counts | {"sampled_users": n_users})


def prepare_stage(data: dict[str, Any], split: dict[str, Any]) -> tuple[PreparedData, dict[str, Any]]:
    """Read the source, make implicit positives, filter users, split, write Parquet and metrics."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        raw = sample_users(load_raw(data), data.get("user_sample"), data.get("seed", 0))
        prepared = prepare(raw, data.get("min_rating"), data["min_positives"], SplitConfig(**split))
        save_prepared(prepared, PREPARED_DIR)
    metrics = {"dataset": data["source"], "counts": dataset_counts(prepared),
               "source_counts": raw.counts, "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "prepare.json", metrics)
    return prepared, metrics


def load_prepared_data() -> PreparedData:
    """The prepare stage's output."""
    return load_prepared(PREPARED_DIR)
