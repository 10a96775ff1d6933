"""Shared by the stage glue: output locations, cost recording, loading earlier stages' outputs,
the selection loop over methods and the results table every stage shows."""
from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from vlm4rec.data import PreparedData, load_prepared
from vlm4rec.evaluation import Candidate, EvalData, MethodResult, select_and_test
from vlm4rec.matching import ProfileRecommender
from vlm4rec.representations import Representation
from vlm4rec.stats import results_table

PREPARED_DIR = Path("data/prepared")
GROUNDING_DIR = Path("data/grounding")
EMBEDDINGS_DIR = Path("data/embeddings")
RESULTS_DIR = Path("data/results")
ABLATIONS_DIR = Path("data/ablations")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
MAIN_METRICS = ("recall@10", "ndcg@10", "hit_rate@10", "recall@20", "ndcg@20", "hit_rate@20")


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


def load_prepared_data() -> PreparedData:
    """The prepare stage's output."""
    return load_prepared(PREPARED_DIR)


def load_descriptions() -> pd.DataFrame:
    """The ground stage's long table (item_idx, arm, status, description, ...)."""
    return pd.read_parquet(GROUNDING_DIR / "descriptions.parquet")


def load_representation_vectors(name: str) -> np.ndarray:
    """Item vectors of a representation written by the embed stage (zero row = no vector)."""
    return Representation.load(EMBEDDINGS_DIR, name).vectors


def profile_candidates(vectors: np.ndarray, profile: dict[str, Any], name: str) -> list[Candidate]:
    """The validation grid of profile matching: one aggregation, its own knob tried on validation
    (recency half-life, knn_sum neighbourhood; the uniform mean has none)."""
    aggregation, cap = profile["aggregation"], profile.get("history_cap")

    def build(**knobs: Any) -> Callable[[], ProfileRecommender]:
        return lambda: ProfileRecommender(vectors, aggregation=aggregation, history_cap=cap, name=name,
                                          **knobs)

    base = {"aggregation": aggregation, "history_cap": cap}
    if aggregation == "recency":
        return [Candidate(base | {"half_life": h}, build(half_life=h)) for h in profile["half_life_grid"]]
    if aggregation == "knn_sum":
        return [Candidate(base | {"knn_k": k}, build(knn_k=k)) for k in profile["knn_k_grid"]]
    return [Candidate(base, build())]


def run_methods(methods: dict[str, list[Candidate]], data: EvalData, eval_params: dict[str, Any],
                out_dir: Path) -> dict[str, MethodResult]:
    """Select each method on validation and test it once; results saved under ``out_dir/<method>``."""
    results = {}
    for method, candidates in methods.items():
        results[method] = select_and_test(method, candidates, data, eval_params["ks"],
                                          eval_params["select_metric"], out_dir / method)
    return results


def test_metrics_json(results: dict[str, MethodResult]) -> dict[str, Any]:
    """Test macro metrics, coverage and timing per method, for ``dvc metrics show``."""
    return {method: {"test": r.test_summary(), "coverage": r.coverage, "chosen": r.config,
                     "users_per_s": r.timing.get("users_per_s")} for method, r in results.items()}


def metric_curves(results: dict[str, MethodResult], metric: str = "recall") -> pd.DataFrame:
    """``metric``@K per method and K (long format; plot data)."""
    rows = []
    for method, result in results.items():
        summary = result.test_summary()
        rows += [{"method": method, "k": int(key.split("@")[1]), metric: value}
                 for key, value in summary.items() if key.startswith(f"{metric}@")]
    return pd.DataFrame(rows)


def per_user_long(results: dict[str, MethodResult]) -> pd.DataFrame:
    """All methods' per-user test metrics stacked, with a ``method`` column (input of stats)."""
    return pd.concat([r.test_per_user.assign(method=m) for m, r in results.items()], ignore_index=True)


def method_family(method: str) -> str:
    """``fusion_attention@seed1`` -> ``fusion_attention``; other names are their own family."""
    return method.split("@")[0]


def collapse_seeds(per_user: pd.DataFrame) -> pd.DataFrame:
    """Per-user metrics of seeded methods averaged over their seeds (one row per family and user)."""
    metric_cols = [c for c in per_user.columns if "@" in c]
    families = per_user.assign(method=per_user["method"].map(method_family))
    return families.groupby(["method", "user_idx"], sort=False)[metric_cols].mean().reset_index()


def main_table(results: dict[str, MethodResult], eval: dict[str, Any],
               metrics: tuple[str, ...] = ("recall@10", "ndcg@10", "hit_rate@10", "recall@20", "ndcg@20",
                                           "hit_rate@20")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table with mean and 95% CI per method x metric, wide 'mean [low, high]' display table).

    Seeded methods enter with their per-user metrics averaged over seeds."""
    per_user = collapse_seeds(per_user_long(results))
    long = results_table(per_user, list(metrics), eval["bootstrap_resamples"], seed=eval["seed"])
    long["value"] = [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in
                     zip(long["mean"], long["ci_low"], long["ci_high"])]
    wide = long.pivot(index="method", columns="metric", values="value")[list(metrics)]
    order = long[long["metric"] == metrics[1]].sort_values("mean", ascending=False)["method"]
    return long, wide.loc[order]
