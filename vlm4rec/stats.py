"""Statistics over per-user metric values (STUDY.md section 4).

Bootstrap confidence intervals resample users; method comparisons are paired over the users both
methods were evaluated on (Wilcoxon signed-rank and paired t-test), Holm-corrected across the methods
compared with one reference.

``per_user`` tables are long format: columns ``method``, ``user_idx`` and one column per metric.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

# Resample means are drawn in chunks holding at most this many user indices at once.
_BOOTSTRAP_CHUNK_CELLS = 4_000_000


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean over users, seeded and vectorised."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-d array of per-user values")
    if not np.isfinite(values).all():
        raise ValueError("bootstrap_ci got NaN or infinite values")
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < level < 1 and n_resamples >= 1, got {level}, {n_resamples}")
    rng = np.random.default_rng(seed)
    n = len(values)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    means = np.concatenate([values[rng.integers(0, n, size=(min(chunk, n_resamples - start), n))]
                            .mean(axis=1) for start in range(0, n_resamples, chunk)])
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(values.mean()), float(low), float(high)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must be in [0, 1], got {p}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def _check_long(per_user: pd.DataFrame, metric: str) -> None:
    missing = {"method", "user_idx", metric} - set(per_user.columns)
    if missing:
        raise ValueError(f"per_user lacks columns {sorted(missing)}")
    if per_user.duplicated(["method", "user_idx"]).any():
        raise ValueError("per_user has more than one row for some (method, user_idx)")


def _paired_pvalues(diff: np.ndarray) -> tuple[float, float]:
    """(Wilcoxon p, paired t p) for differences ``diff``.

    Degenerate cases are decided, not left to NaN: all differences zero -> both p = 1; constant
    non-zero differences -> t-test p = 0 (no variance around a non-zero shift).
    """
    if not diff.any():
        return 1.0, 1.0
    wilcoxon_p = float(sps.wilcoxon(diff, zero_method="wilcox").pvalue)
    if np.all(diff == diff[0]):
        return wilcoxon_p, 0.0
    return wilcoxon_p, float(sps.ttest_1samp(diff, 0.0).pvalue)


def paired_tests(per_user: pd.DataFrame, reference: str, metric: str) -> pd.DataFrame:
    """Each other method against ``reference`` on ``metric``, over the users common to both.

    Columns: method, reference, metric, n_users, mean_method, mean_reference, mean_diff
    (method - reference), wilcoxon_p, ttest_p and their Holm-corrected versions across the methods.
    """
    _check_long(per_user, metric)
    methods = list(dict.fromkeys(per_user["method"]))
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} not in per_user (has {methods})")
    ref = per_user.loc[per_user["method"] == reference, ["user_idx", metric]]
    rows = []
    for method in methods:
        if method == reference:
            continue
        other = per_user.loc[per_user["method"] == method, ["user_idx", metric]]
        paired = other.merge(ref, on="user_idx", suffixes=("_m", "_r"))
        if paired.empty:
            raise ValueError(f"{method!r} and {reference!r} share no users")
        x, y = paired[f"{metric}_m"].to_numpy(float), paired[f"{metric}_r"].to_numpy(float)
        wilcoxon_p, ttest_p = _paired_pvalues(x - y)
        rows.append({"method": method, "reference": reference, "metric": metric,
                     "n_users": len(paired), "mean_method": x.mean(), "mean_reference": y.mean(),
                     "mean_diff": (x - y).mean(), "wilcoxon_p": wilcoxon_p, "ttest_p": ttest_p})
    table = pd.DataFrame(rows, columns=["method", "reference", "metric", "n_users", "mean_method",
                                        "mean_reference", "mean_diff", "wilcoxon_p", "ttest_p"])
    table["wilcoxon_p_holm"] = holm(table["wilcoxon_p"].to_numpy())
    table["ttest_p_holm"] = holm(table["ttest_p"].to_numpy())
    return table


def results_table(per_user: pd.DataFrame, metrics: Sequence[str], n_resamples: int = 1000,
                  level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap CI per method x metric (long: method, metric, n_users, mean, ci_low, ci_high)."""
    rows = []
    for metric in metrics:
        _check_long(per_user, metric)
    for method, group in per_user.groupby("method", sort=False):
        for metric in metrics:
            mean, low, high = bootstrap_ci(group[metric].to_numpy(), n_resamples, level, seed)
            rows.append({"method": method, "metric": metric, "n_users": len(group), "mean": mean,
                         "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)
