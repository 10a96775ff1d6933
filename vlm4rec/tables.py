"""Tables and metrics JSON built from :class:`~vlm4rec.evaluation.MethodResult` objects: the main table
with seed-aware 95% CIs, the paired tests, metric@K curves and the per-method entries of a stage's
metrics file. Results are keyed by :class:`~vlm4rec.evaluation.MethodKey`: a seeded method's seeds enter every
table as one family; the metrics JSON is keyed by the key's name."""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from vlm4rec.config import EvalParams
from vlm4rec.evaluation import MethodKey, MethodResult, per_user_long
from vlm4rec.methods import Kind, family_of
from vlm4rec.stats import format_p, paired_tests, results_table

MAIN_TABLE_METRICS = ("recall@10", "ndcg@10", "hit_rate@10", "recall@20", "ndcg@20", "hit_rate@20")


#: The panel of each method kind (:mod:`vlm4rec.methods`) in figures that put each kind in its own panel.
KIND_GROUPS: dict[Kind, str] = {"baseline": "collaborative baselines",
                                "profile": "profile matching (one representation)",
                                "fusion": "content fusions and hybrids", "hybrid": "content fusions and hybrids",
                                "graph_model": "multimodal recommenders", "cold_start_model": "cold-start recommenders"}


def method_group(family: str, representations: Sequence[str]) -> str:
    """Which kind of method a family is (its catalogue kind; a family the catalogue cannot name from
    ``representations`` is a graph cell), for figures that put each kind in its own panel."""
    found = family_of(family, representations)
    return KIND_GROUPS[found.kind if found is not None else "graph_model"]


def validation_scores(results: dict[MethodKey, MethodResult]) -> pd.Series:
    """Per method family, the validation selection metric of its chosen configuration (a seeded family's
    selection run, which every seed's result carries), named ``validation <metric>``."""
    first = {}
    for key, r in results.items():
        first.setdefault(key.family, r)
    metrics = {r.select_metric for r in first.values()}
    if len(metrics) != 1:
        raise ValueError(f"the methods were selected on different metrics {sorted(metrics)}")
    metric = metrics.pop()
    return pd.Series({f: r.val_summary()[metric] for f, r in first.items()}, name=f"validation {metric}")


def main_table(results: dict[MethodKey, MethodResult], evaluation: EvalParams,
               metrics: Sequence[str] = MAIN_TABLE_METRICS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table with mean and 95% CI per method family x metric, wide 'mean [low, high]' display
    table with the validation selection metric first, sorted by it: never by test). Seeded families' CIs
    resample users and seeds."""
    long = results_table(per_user_long(results), list(metrics), evaluation.bootstrap_resamples,
                         seed=evaluation.seed)
    long["value"] = [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in
                     zip(long["mean"], long["ci_low"], long["ci_high"])]
    wide = long.pivot(index="method", columns="metric", values="value")[list(metrics)]
    seeds = long.groupby("method")["n_seeds"].first()
    wide.insert(0, "seeds", seeds.reindex(wide.index))
    validation = validation_scores(results)
    wide.insert(1, validation.name, validation.reindex(wide.index).round(4))
    return long, wide.sort_values(validation.name, ascending=False, kind="stable")


P_COLUMN = "p (paired bootstrap, Holm)"


def paired_test_table(results: dict[MethodKey, MethodResult], references: Sequence[str], metrics: Sequence[str],
                      evaluation: EvalParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long paired-test table, compact display table).

    Every method family against each reference on each metric (:func:`vlm4rec.stats.paired_tests`: one
    paired bootstrap over users and both arms' seeds gives the CI of the mean difference and its p, Holm
    within a reference and metric). The display has one row per method and metric and, per reference, the
    difference with its CI and the Holm-corrected bootstrap p ("one seed: no verdict" for a seeded family
    evaluated with a single seed).
    """
    per_user = per_user_long(results)
    present = set(per_user["method"])
    long = pd.concat([paired_tests(per_user, ref, metric, evaluation.bootstrap_resamples, evaluation.seed)
                      for ref in references if ref in present for metric in metrics], ignore_index=True)
    if long.empty:
        return long, pd.DataFrame()
    long["difference"] = [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in
                          zip(long["mean_diff"], long["diff_ci_low"], long["diff_ci_high"])]
    long[P_COLUMN] = [format_p(p) if blocked == "" else f"{blocked}: no verdict"
                      for p, blocked in zip(long["p_holm"], long["verdict_blocked_by"])]
    wide = long.pivot_table(index=["metric", "method"], columns="reference",
                            values=["difference", P_COLUMN], aggfunc="first")
    wide = wide.swaplevel(axis=1).sort_index(axis=1, level=0)
    return long, wide


def metric_curves(results: dict[MethodKey, MethodResult], metric: str = "recall") -> pd.DataFrame:
    """``metric``@K per method family and K, seeded families averaged over seeds (plot data)."""
    rows = [{"method": key.family, "k": int(name.split("@")[1]), metric: value}
            for key, result in results.items()
            for name, value in result.test_summary().items() if name.startswith(f"{metric}@")]
    frame = pd.DataFrame(rows, columns=["method", "k", metric])
    return frame.groupby(["method", "k"], as_index=False, sort=False)[metric].mean()


def test_metrics_json(results: dict[MethodKey, MethodResult]) -> dict[str, Any]:
    """Per method: test macro metrics, the chosen configuration's validation selection metric, catalogue
    coverage and the chosen configuration (for ``dvc metrics show``), keyed by the method's name."""
    entries = {}
    for key, r in results.items():
        validation = r.val_summary()
        entries[key.name] = {"test": r.test_summary(), "validation": {r.select_metric: validation[r.select_metric]},
                           "coverage": r.coverage, "chosen": r.config}
    return entries


def timing_json(results: dict[MethodKey, MethodResult]) -> dict[str, dict[str, float]]:
    """Per method name: selection, fit and scoring seconds and users/s (the ``cost`` part of a stage's
    metrics)."""
    return {key.name: {what: round(float(value), 3) for what, value in r.timing.items()}
            for key, r in results.items()}


def seed_spread(results: dict[MethodKey, MethodResult], metric: str) -> pd.DataFrame:
    """Per seeded family: the number of seeds and the mean, standard deviation, min and max over seeds of
    the test ``metric``."""
    rows = [{"method": key.family, metric: r.test_summary()[metric]}
            for key, r in results.items() if key.seed is not None]
    frame = pd.DataFrame(rows, columns=["method", metric])
    return frame.groupby("method")[metric].agg(n_seeds="size", mean="mean", std="std", min="min", max="max")
