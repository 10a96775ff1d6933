"""Statistics over per-user metric values (docs/protocol.md, "Statistics").

Bootstrap confidence intervals resample users; for a seeded method (one result per training seed) they
resample users and seeds together, so the interval carries the seed-to-seed variation too. Method
comparisons are paired over the users both methods were evaluated on (Wilcoxon signed-rank and paired
t-test on per-user values, seed-averaged), Holm-corrected across the methods compared with one reference,
with a bootstrap CI of the mean paired difference.

``per_user`` tables are long format: columns ``method``, ``user_idx``, one column per metric and, for
seeded methods, ``seed`` (one row per method, seed and user; the other methods leave it empty).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

# Resample means are drawn in chunks holding at most this many (seed, user) draws at once.
_BOOTSTRAP_CHUNK_CELLS = 4_000_000


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean, seeded and vectorised.

    ``values`` is 1-d (one value per user: users are resampled) or 2-d ``(n_seeds, n_users)`` (a seeded
    method: each resample draws users and seeds with replacement, independently, and averages the drawn
    cells), so the interval covers both the user sample and the training seed.
    """
    values = np.asarray(values, dtype=np.float64)
    grid = values[None, :] if values.ndim == 1 else values
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-d (users) or 2-d (seeds x users) array")
    if not np.isfinite(grid).all():
        raise ValueError("bootstrap_ci got NaN or infinite values")
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < level < 1 and n_resamples >= 1, got {level}, {n_resamples}")
    rng = np.random.default_rng(seed)
    n_seeds, n_users = grid.shape
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // (n_users * n_seeds))
    means = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        users = rng.integers(0, n_users, size=(size, n_users))
        if n_seeds == 1:
            means.append(grid[0][users].mean(axis=1))
            continue
        seeds = rng.integers(0, n_seeds, size=(size, n_seeds))
        per_seed = grid[:, users].mean(axis=2)              # (n_seeds, size): each seed on the drawn users
        means.append(np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1))
    alpha = (1 - level) / 2
    low, high = np.quantile(np.concatenate(means), [alpha, 1 - alpha])
    return float(grid.mean()), float(low), float(high)


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
    keys = ["method", "user_idx"] + (["seed"] if "seed" in per_user.columns else [])
    if per_user.duplicated(keys).any():
        raise ValueError(f"per_user has more than one row for some ({', '.join(keys)})")


def seed_matrix(per_user: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    """``metric`` of ``method`` as a (seeds x users) frame (one row for an unseeded method); every seed
    must cover the same users."""
    rows = per_user[per_user["method"] == method]
    seeds = rows["seed"].fillna(-1) if "seed" in rows.columns else pd.Series(-1, index=rows.index)
    matrix = rows.assign(seed=seeds).pivot(index="seed", columns="user_idx", values=metric)
    if matrix.isna().any().any():
        raise ValueError(f"the seeds of {method!r} were evaluated on different users")
    return matrix


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


def paired_tests(per_user: pd.DataFrame, reference: str, metric: str, n_resamples: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """Each other method against ``reference`` on ``metric``, over the users common to both.

    The tests run on per-user values averaged over each method's seeds; ``diff_ci_low`` / ``diff_ci_high``
    bracket the mean difference (method - reference) by a bootstrap over users (and the method's seeds).
    Columns: method, reference, metric, n_users, n_seeds, mean_method, mean_reference, mean_diff,
    diff_ci_low, diff_ci_high, wilcoxon_p, ttest_p and their Holm-corrected versions across the methods.
    """
    _check_long(per_user, metric)
    methods = list(dict.fromkeys(per_user["method"]))
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} not in per_user (has {methods})")
    ref = seed_matrix(per_user, reference, metric).mean(axis=0)
    rows = []
    for method in methods:
        if method == reference:
            continue
        other = seed_matrix(per_user, method, metric)
        common = other.columns.intersection(ref.index)
        if common.empty:
            raise ValueError(f"{method!r} and {reference!r} share no users")
        diffs = other[common].to_numpy(float) - ref[common].to_numpy(float)[None, :]
        wilcoxon_p, ttest_p = _paired_pvalues(diffs.mean(axis=0))
        mean_diff, low, high = bootstrap_ci(diffs, n_resamples, seed=seed)
        rows.append({"method": method, "reference": reference, "metric": metric, "n_users": len(common),
                     "n_seeds": len(other), "mean_method": float(other[common].to_numpy().mean()),
                     "mean_reference": float(ref[common].mean()), "mean_diff": mean_diff,
                     "diff_ci_low": low, "diff_ci_high": high, "wilcoxon_p": wilcoxon_p, "ttest_p": ttest_p})
    table = pd.DataFrame(rows, columns=["method", "reference", "metric", "n_users", "n_seeds", "mean_method",
                                        "mean_reference", "mean_diff", "diff_ci_low", "diff_ci_high",
                                        "wilcoxon_p", "ttest_p"])
    table["wilcoxon_p_holm"] = holm(table["wilcoxon_p"].to_numpy())
    table["ttest_p_holm"] = holm(table["ttest_p"].to_numpy())
    return table


def results_table(per_user: pd.DataFrame, metrics: Sequence[str], n_resamples: int = 1000,
                  level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap CI per method x metric (long: method, metric, n_users, n_seeds, mean, ci_low,
    ci_high); seeded methods resample their seeds too."""
    for metric in metrics:
        _check_long(per_user, metric)
    rows = []
    for method in dict.fromkeys(per_user["method"]):
        for metric in metrics:
            matrix = seed_matrix(per_user, method, metric)
            mean, low, high = bootstrap_ci(matrix.to_numpy(), n_resamples, level, seed)
            rows.append({"method": method, "metric": metric, "n_users": matrix.shape[1],
                         "n_seeds": matrix.shape[0], "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)
