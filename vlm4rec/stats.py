"""Statistics over per-user metric values (docs/protocol.md, "Statistics").

Bootstrap confidence intervals resample users; for a seeded method (one result per training seed) they
resample users and seeds together, so the interval carries the seed-to-seed variation too. Method
comparisons are paired over the users both methods were evaluated on: one paired bootstrap of the mean
difference (users drawn once for both arms, each arm's seeds drawn independently) gives its CI and its
two-sided p-value, Holm-corrected across the methods compared with one reference. A seeded arm with a
single seed gets no p-value ("one seed: no verdict").

``per_user`` tables are long format: columns ``method``, ``user_idx``, one column per metric and, for
seeded methods, ``seed`` (one row per method, seed and user; the other methods leave it empty).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

# Resample means are drawn in chunks holding at most this many (seed, user) draws at once.
_BOOTSTRAP_CHUNK_CELLS = 4_000_000


def _resampled_means(grid: np.ndarray, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean of ``grid`` (seeds x users) in each resample: the drawn users (rows of ``users``) and, for more
    than one seed, as many seeds drawn with replacement (a one-seed grid draws no seeds)."""
    if len(grid) == 1:
        return grid[0][users].mean(axis=1)
    seeds = rng.integers(0, len(grid), size=(len(users), len(grid)))
    per_seed = grid[:, users].mean(axis=2)              # (n_seeds, size): each seed on the drawn users
    return np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1)


def _as_grid(values: np.ndarray) -> np.ndarray:
    grid = np.asarray(values, dtype=np.float64)
    grid = grid[None, :] if grid.ndim == 1 else grid
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError("the bootstrap needs a non-empty 1-d (users) or 2-d (seeds x users) array")
    if not np.isfinite(grid).all():
        raise ValueError("the bootstrap got NaN or infinite values")
    return grid


def bootstrap_distribution(values: np.ndarray, reference: np.ndarray | None = None, n_resamples: int = 1000,
                           seed: int = 0) -> np.ndarray:
    """``n_resamples`` bootstrap replicates of the mean of ``values``, or of the mean paired difference
    ``values - reference``.

    Each array is 1-d (one value per user) or 2-d ``(n_seeds, n_users)`` (a seeded method). A replicate
    draws the users with replacement (the same users for both arms: the comparison is paired) and then,
    independently per arm, as many of that arm's seeds with replacement, and averages the drawn cells; so
    the spread carries the user sample and both arms' training seeds. Both arms must cover the same users,
    in the same column order.
    """
    grids = [_as_grid(values)] + ([] if reference is None else [_as_grid(reference)])
    n_users = grids[0].shape[1]
    if any(g.shape[1] != n_users for g in grids):
        raise ValueError(f"paired arms cover different numbers of users: {[g.shape[1] for g in grids]}")
    if n_resamples < 1:
        raise ValueError(f"need n_resamples >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // (n_users * max(len(g) for g in grids)))
    replicates = []
    for start in range(0, n_resamples, chunk):
        users = rng.integers(0, n_users, size=(min(chunk, n_resamples - start), n_users))
        means = [_resampled_means(g, users, rng) for g in grids]
        replicates.append(means[0] - means[1] if reference is not None else means[0])
    return np.concatenate(replicates)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(low, high): the central ``level`` percentile interval of bootstrap replicates."""
    if not 0 < level < 1:
        raise ValueError(f"need 0 < level < 1, got {level}")
    alpha = (1 - level) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the mean difference is 0": twice the smaller share of replicates on
    either side of 0 (counting ties on both), with the add-one correction ``(count + 1) / (n + 1)``.

    It is the test the percentile CI inverts: p < 1 - level about when 0 lies outside the interval, and
    never below ``2 / (n + 1)``.
    """
    n = len(replicates)
    below, above = int((replicates <= 0).sum()), int((replicates >= 0).sum())
    return float(min(1.0, 2 * (min(below, above) + 1) / (n + 1)))


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean, seeded and vectorised.

    ``values`` is 1-d (one value per user: users are resampled) or 2-d ``(n_seeds, n_users)`` (a seeded
    method: each resample draws users and seeds with replacement, independently, and averages the drawn
    cells), so the interval covers both the user sample and the training seed.
    """
    replicates = bootstrap_distribution(values, None, n_resamples, seed)
    return (float(_as_grid(values).mean()), *percentile_interval(replicates, level))


def format_p(p: float) -> str:
    """A p-value a reader can scan: ``0.032``, ``1.2e-04``, ``<1e-10``."""
    if p < 1e-10:
        return "<1e-10"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


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


def _single_seed(per_user: pd.DataFrame, method: str, n_seeds: int) -> bool:
    """Whether ``method`` is a seeded method (a non-empty ``seed``) evaluated with one seed only."""
    if "seed" not in per_user.columns or n_seeds > 1:
        return False
    return bool(per_user.loc[per_user["method"] == method, "seed"].notna().any())


PAIRED_COLUMNS = ["method", "reference", "metric", "n_users", "n_seeds", "n_seeds_reference", "mean_method",
                  "mean_reference", "mean_diff", "diff_ci_low", "diff_ci_high", "p", "verdict_blocked_by"]


def paired_tests(per_user: pd.DataFrame, reference: str, metric: str, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Each other method against ``reference`` on ``metric``, over the users common to both.

    ``mean_diff`` is the mean over users of (method's mean over its seeds - reference's mean over its
    seeds). One paired bootstrap (:func:`bootstrap_distribution`: users, and each arm's seeds
    independently) gives both its percentile CI (``diff_ci_low`` / ``diff_ci_high``) and its two-sided
    p-value ``p`` (:func:`bootstrap_p`), so the test, the interval and the sign all speak of the same mean
    difference. ``p_holm`` is Holm-corrected across the methods. A seeded arm evaluated with a single seed
    cannot show its seed-to-seed spread: such a row has no p (NaN, left out of Holm) and
    ``verdict_blocked_by`` = "one seed" (empty otherwise).
    """
    _check_long(per_user, metric)
    methods = list(dict.fromkeys(per_user["method"]))
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} not in per_user (has {methods})")
    ref = seed_matrix(per_user, reference, metric)
    rows = []
    for method in methods:
        if method == reference:
            continue
        other = seed_matrix(per_user, method, metric)
        common = other.columns.intersection(ref.columns)
        if common.empty:
            raise ValueError(f"{method!r} and {reference!r} share no users")
        mine, theirs = other[common].to_numpy(float), ref[common].to_numpy(float)
        replicates = bootstrap_distribution(mine, theirs, n_resamples, seed)
        low, high = percentile_interval(replicates, level)
        one_seed = _single_seed(per_user, method, len(other)) or _single_seed(per_user, reference, len(ref))
        rows.append({"method": method, "reference": reference, "metric": metric, "n_users": len(common),
                     "n_seeds": len(other), "n_seeds_reference": len(ref), "mean_method": float(mine.mean()),
                     "mean_reference": float(theirs.mean()), "mean_diff": float(mine.mean() - theirs.mean()),
                     "diff_ci_low": low, "diff_ci_high": high,
                     "p": float("nan") if one_seed else bootstrap_p(replicates),
                     "verdict_blocked_by": "one seed" if one_seed else ""})
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    table["p_holm"] = holm_where_tested(table["p"].to_numpy())
    return table


def holm_where_tested(pvalues: Sequence[float]) -> np.ndarray:
    """:func:`holm` over the finite p-values; NaN (a comparison that was not tested) stays NaN and does not
    count in the family."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(len(p), np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        adjusted[tested] = holm(p[tested])
    return adjusted


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
