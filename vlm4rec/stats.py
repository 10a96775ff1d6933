"""Statistics over per-user metric values (docs/protocol.md, "Statistics").

Bootstrap confidence intervals resample users; for a seeded method (one result per training seed) each
resample also draws the seeds, with the seed deviation inflated so that its variance is the unbiased one of
a mean of few seeds (:func:`seed_inflation`). Method comparisons are paired over the users both methods were
evaluated on: one paired bootstrap of the mean difference (users drawn once for both arms, each arm's seeds
drawn independently) gives its CI and its two-sided p-value. A comparison that would test nothing (a
seeded arm with one seed, identical or constant arms, too few users with a non-zero value) gets no p-value
and says why. Findings on few items resample the items as well (:func:`two_way_replicates`).

The bootstrap is vectorised: one matrix of user draw counts serves every method evaluated on the same users
(resampled means are matrix products), and the draws are kept for the next call on the same users
(benchmarks/bench_bootstrap.py times the report's statistics at the study's size).

``per_user`` tables are long format: columns ``method``, ``user_idx``, one column per metric and, for
seeded methods, ``seed`` (one row per method, seed and user; the other methods leave it empty).
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

# User draws are generated in chunks holding at most this many (resample, user) cells at once.
_BOOTSTRAP_CHUNK_CELLS = 4_000_000


def _as_grid(values: np.ndarray) -> np.ndarray:
    grid = np.asarray(values, dtype=np.float64)
    grid = grid[None, :] if grid.ndim == 1 else grid
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError("the bootstrap needs a non-empty 1-d (users) or 2-d (seeds x users) array")
    if not np.isfinite(grid).all():
        raise ValueError("the bootstrap got NaN or infinite values")
    return grid


def draw_counts(n: int, n_resamples: int, rng: np.random.Generator,
                chunk: int | None = None) -> Iterator[np.ndarray]:
    """Chunks of a (resamples x n) matrix: how often each of ``n`` units (users, items) is drawn, with
    replacement, in each resample (every row sums to ``n``). Resampled means are then matrix products, so
    one draw serves every column that shares the units."""
    if n_resamples < 1:
        raise ValueError(f"need n_resamples >= 1, got {n_resamples}")
    chunk = chunk or max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        drawn = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        yield np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


@functools.lru_cache(maxsize=4)
def _user_counts(n_users: int, n_resamples: int, seed: int) -> np.ndarray:
    """The (resamples x users) draw counts of the users' stream of ``seed``, kept (as uint8, 60 MB for 10,000
    resamples of 6,000 users) for the next call on the same users: the report draws the same users for its
    tables and findings, and the draw costs more than the matrix products that use it."""
    def small(chunk: np.ndarray) -> np.ndarray:
        if chunk.max() > np.iinfo(np.uint8).max:
            raise OverflowError(f"a user was drawn more than 255 times in one resample of {n_users:,}")
        return chunk.astype(np.uint8)

    counts = np.concatenate([small(chunk) for chunk in draw_counts(n_users, n_resamples, _streams(seed, 0)[0])])
    counts.flags.writeable = False
    return counts


def seed_inflation(n_seeds: int) -> float:
    """sqrt(S / (S - 1)): drawing S seeds with replacement gives their mean the plug-in variance
    (S - 1) / S * s^2 / S; scaling each replicate's seed deviation by this factor gives it s^2 / S, the
    unbiased variance of the mean of S seeds (1 for one seed)."""
    return float(np.sqrt(n_seeds / (n_seeds - 1))) if n_seeds > 1 else 1.0


def resample_seeds(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(resamples,) from (resamples x seeds) per-seed means: the all-seed mean plus the deviation of a
    with-replacement draw of as many seeds, inflated by :func:`seed_inflation` (no draw for one seed)."""
    overall = per_seed.mean(axis=1)
    n_seeds = per_seed.shape[1]
    if n_seeds == 1:
        return overall
    drawn = np.take_along_axis(per_seed, rng.integers(0, n_seeds, size=per_seed.shape), axis=1).mean(axis=1)
    return overall + seed_inflation(n_seeds) * (drawn - overall)


def _streams(seed: int, n_arms: int) -> tuple[np.random.Generator, list[np.random.Generator]]:
    """One generator for the unit draws and one per arm for its seeds, all from ``seed``."""
    children = np.random.SeedSequence(seed).spawn(n_arms + 1)
    return np.random.default_rng(children[0]), [np.random.default_rng(c) for c in children[1:]]


def arm_replicates(arms: Sequence[np.ndarray], n_resamples: int = 10_000, seed: int = 0) -> list[np.ndarray]:
    """Bootstrap replicates of each arm's mean, every arm on the same user draws.

    Each arm is 1-d (one value per user) or 2-d ``(n_seeds, n_users)`` (a seeded method), all over the same
    users in the same column order. A replicate draws the users with replacement (one draw for all arms:
    comparisons are paired) and then, independently per arm, its seeds (:func:`resample_seeds`). Every arm's
    per-seed means come from one matrix product of the draw counts with all arms' columns."""
    grids = [_as_grid(a) for a in arms]
    n_users = grids[0].shape[1]
    if any(g.shape[1] != n_users for g in grids):
        raise ValueError(f"paired arms cover different numbers of users: {[g.shape[1] for g in grids]}")
    seed_rngs = _streams(seed, len(grids))[1]
    columns = np.concatenate([g.T for g in grids], axis=1) / n_users
    counts = _user_counts(n_users, n_resamples, seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n_users)
    means = np.concatenate([counts[start:start + chunk].astype(np.float64) @ columns
                            for start in range(0, n_resamples, chunk)])
    bounds = np.cumsum([0] + [len(g) for g in grids])
    return [resample_seeds(means[:, lo:hi], rng) for lo, hi, rng in zip(bounds[:-1], bounds[1:], seed_rngs)]


def bootstrap_distribution(values: np.ndarray, reference: np.ndarray | None = None, n_resamples: int = 10_000,
                           seed: int = 0) -> np.ndarray:
    """``n_resamples`` bootstrap replicates of the mean of ``values``, or of the mean paired difference
    ``values - reference`` (:func:`arm_replicates`: users drawn once for both arms, each arm's seeds
    drawn independently, their deviation inflated for the few seeds)."""
    replicates = arm_replicates([values] + ([] if reference is None else [reference]), n_resamples, seed)
    return replicates[0] if reference is None else replicates[0] - replicates[1]


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
    never below :func:`p_floor` ``= 2 / (n + 1)``.
    """
    n = len(replicates)
    below, above = int((replicates <= 0).sum()), int((replicates >= 0).sum())
    return float(min(1.0, 2 * (min(below, above) + 1) / (n + 1)))


def p_floor(n_resamples: int) -> float:
    """The smallest p :func:`bootstrap_p` gives with ``n_resamples`` replicates: no replicate on the far side
    of 0. A p at the floor says only that the true p is below it."""
    return 2 / (n_resamples + 1)


def bootstrap_ci(values: np.ndarray, n_resamples: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean, seeded and vectorised.

    ``values`` is 1-d (one value per user: users are resampled) or 2-d ``(n_seeds, n_users)`` (a seeded
    method: each resample draws users, then seeds with replacement with the seed deviation inflated by
    :func:`seed_inflation`), so the interval covers both the user sample and the training seed.
    """
    replicates = bootstrap_distribution(values, None, n_resamples, seed)
    return (float(_as_grid(values).mean()), *percentile_interval(replicates, level))


def _round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (a bound stays a bound when printed)."""
    scale = 10 ** (digits - 1 - int(np.floor(np.log10(value))))
    return float(np.ceil(value * scale - 1e-9) / scale)


def format_p(p: float, at_floor: bool = False) -> str:
    """A p-value a reader can scan: ``0.032``, ``1.2e-04``; ``< 0.0002`` when ``p`` is the bootstrap's
    resolution bound (``at_floor``: no replicate beyond 0, or a Holm p computed from such a bound), which
    says only that the true p is below it; "not tested" for NaN."""
    if np.isnan(p):
        return "not tested"
    if at_floor and p < 1:
        return f"< {_round_up(p):g}"
    if p < 1e-10:
        return "<1e-10"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def p_statement(p: float, at_floor: bool = False) -> str:
    """``p = 0.032``, or ``p < 0.0002`` at the bootstrap's floor (:func:`format_p`)."""
    text = format_p(p, at_floor)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


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


def seed_matrices(per_user: pd.DataFrame, metrics: Sequence[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (method, metric), in the table's method order: ``metric`` of ``method`` as a (seeds x users) frame
    (one row, seed -1, for an unseeded method); every seed must cover the same users. One pass over the
    table, however many methods it holds."""
    seeds = per_user["seed"].fillna(-1) if "seed" in per_user.columns else pd.Series(-1.0, index=per_user.index)
    table = per_user.assign(seed=seeds)
    matrices = {}
    for method, rows in table.groupby("method", sort=False):
        for metric in metrics:
            matrix = rows.pivot(index="seed", columns="user_idx", values=metric)
            if matrix.isna().any().any():
                raise ValueError(f"the seeds of {method!r} were evaluated on different users")
            matrices[str(method), metric] = matrix
    return matrices


def _single_seed(matrix: pd.DataFrame) -> bool:
    """Whether a (seeds x users) frame of :func:`seed_matrices` is a seeded method's with one seed only."""
    return len(matrix) == 1 and matrix.index[0] != -1


# A comparison in which fewer users than this have a non-zero value in either arm is not tested.
MIN_NONZERO_USERS = 10


def vacuous_because(mine: np.ndarray, theirs: np.ndarray, metric: str) -> str:
    """Why comparing two (seeds x users) arms would test nothing ('' when it would not): identical per-user
    values (e.g. a hybrid whose validation chose content weight 0 against EASE^R), both arms constant (e.g.
    0 against 0), or fewer than :data:`MIN_NONZERO_USERS` users with a non-zero ``metric`` in either arm."""
    if mine.shape == theirs.shape and np.array_equal(mine, theirs):
        return "identical per-user values"
    if np.ptp(mine) == 0 and np.ptp(theirs) == 0:
        return f"both arms constant ({mine.flat[0]:.4g} and {theirs.flat[0]:.4g} for every user)"
    nonzero = int(((mine != 0).any(axis=0) | (theirs != 0).any(axis=0)).sum())
    if nonzero < MIN_NONZERO_USERS:
        return f"{nonzero} user(s) with a non-zero {metric}, fewer than {MIN_NONZERO_USERS}"
    return ""


PAIRED_COLUMNS = ["method", "reference", "metric", "n_users", "n_seeds", "n_seeds_reference", "mean_method",
                  "mean_reference", "mean_diff", "diff_ci_low", "diff_ci_high", "p", "p_at_floor",
                  "verdict_blocked_by", "resampling"]
USER_RESAMPLING = "users x seeds (seed deviation inflated)"
TWO_WAY_RESAMPLING = "users x items x seeds (seed deviation inflated)"


def paired_row(method: str, reference: str, metric: str, mine: np.ndarray, theirs: np.ndarray,
               replicates: np.ndarray, blocked: str, n_resamples: int, level: float = 0.95,
               resampling: str = USER_RESAMPLING) -> dict[str, object]:
    """One row of :func:`paired_tests` from the arms' (seeds x users) values and the bootstrap replicates
    of their mean difference; ``blocked`` (why there is no test) leaves ``p`` NaN."""
    low, high = percentile_interval(replicates, level)
    p = float("nan") if blocked else bootstrap_p(replicates)
    return {"method": method, "reference": reference, "metric": metric, "n_users": mine.shape[1],
            "n_seeds": len(mine), "n_seeds_reference": len(theirs), "mean_method": float(mine.mean()),
            "mean_reference": float(theirs.mean()), "mean_diff": float(mine.mean() - theirs.mean()),
            "diff_ci_low": low, "diff_ci_high": high, "p": p, "p_at_floor": bool(p <= p_floor(n_resamples)),
            "verdict_blocked_by": blocked, "resampling": resampling}


def paired_tests(per_user: pd.DataFrame, reference: str, metric: str, n_resamples: int = 10_000,
                 seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Each other method against ``reference`` on ``metric``, over the users common to both.

    ``mean_diff`` is the mean over users of (method's mean over its seeds - reference's mean over its
    seeds). One paired bootstrap (:func:`arm_replicates`: users, and each arm's seeds independently; the
    methods evaluated on the reference's users share one draw) gives both its percentile CI
    (``diff_ci_low`` / ``diff_ci_high``) and its two-sided p-value ``p`` (:func:`bootstrap_p`;
    ``p_at_floor``: it is the resolution bound), so the test, the interval and the sign all speak of the same
    mean difference. The p is unadjusted: which comparisons form a Holm family is the caller's decision
    (:mod:`vlm4rec.findings`), so no table adjusts one comparison with another m. A comparison that would test
    nothing has no p (NaN) and says why in ``verdict_blocked_by``: a seeded arm evaluated with a single seed
    ("one seed"), or :func:`vacuous_because`.
    """
    _check_long(per_user, metric)
    matrices = {method: matrix for (method, _), matrix in seed_matrices(per_user, [metric]).items()}
    if reference not in matrices:
        raise ValueError(f"reference method {reference!r} not in per_user (has {list(matrices)})")
    ref = matrices.pop(reference)
    others = matrices
    shared = [m for m, other in others.items() if other.columns.equals(ref.columns)]
    replicates = {}
    if shared:
        arms = arm_replicates([ref.to_numpy(float)] + [others[m].to_numpy(float) for m in shared], n_resamples, seed)
        replicates = {m: arm - arms[0] for m, arm in zip(shared, arms[1:])}
    rows = []
    for method, other in others.items():
        common = other.columns.intersection(ref.columns)
        if common.empty:
            raise ValueError(f"{method!r} and {reference!r} share no users")
        mine, theirs = other[common].to_numpy(float), ref[common].to_numpy(float)
        if method not in replicates:
            replicates[method] = bootstrap_distribution(mine, theirs, n_resamples, seed)
        one_seed = _single_seed(other) or _single_seed(ref)
        blocked = "one seed" if one_seed else vacuous_because(mine, theirs, metric)
        rows.append(paired_row(method, reference, metric, mine, theirs, replicates[method], blocked,
                               n_resamples, level))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def holm_where_tested(pvalues: Sequence[float]) -> np.ndarray:
    """:func:`holm` over the finite p-values; NaN (a comparison that was not tested) stays NaN and does not
    count in the family."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(len(p), np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        adjusted[tested] = holm(p[tested])
    return adjusted


def results_table(per_user: pd.DataFrame, metrics: Sequence[str], n_resamples: int = 10_000,
                  level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap CI per method x metric (long: method, metric, n_users, n_seeds, mean, ci_low,
    ci_high); seeded methods resample their seeds too. Methods evaluated on the same users share one user
    draw (:func:`arm_replicates`), so the table costs one matrix product per chunk of resamples."""
    for metric in metrics:
        _check_long(per_user, metric)
    cells = seed_matrices(per_user, metrics)
    by_users: dict[tuple[int, ...], list[tuple[str, str]]] = {}
    for cell, matrix in cells.items():
        by_users.setdefault(tuple(matrix.columns), []).append(cell)
    intervals = {}
    for group in by_users.values():
        replicates = arm_replicates([cells[cell].to_numpy(float) for cell in group], n_resamples, seed)
        intervals |= {cell: percentile_interval(r, level) for cell, r in zip(group, replicates)}
    return pd.DataFrame([{"method": method, "metric": metric, "n_users": matrix.shape[1], "n_seeds": matrix.shape[0],
                          "mean": float(matrix.to_numpy().mean()), "ci_low": intervals[method, metric][0],
                          "ci_high": intervals[method, metric][1]}
                         for (method, metric), matrix in cells.items()])


def two_way_replicates(pair_users: np.ndarray, pair_items: np.ndarray, arms: Sequence[np.ndarray],
                       n_resamples: int = 10_000, seed: int = 0) -> list[np.ndarray]:
    """Bootstrap replicates of each arm's mean recall resampling users **and** items (two-way), for findings
    whose targets concentrate on a few items (the new items: a handful carry most test pairs).

    ``pair_users`` / ``pair_items`` label the (user, target item) pairs; each arm is (seeds x pairs): whether
    the pair's item is in that user's top-K (or its expected value, for chance). A replicate draws the users
    and, independently, the items with replacement (one draw for all arms); a user's recall is the share of
    their drawn targets that are hit, each target counted as often as its item is drawn; users with no drawn
    target leave that replicate; the mean weights the drawn users by their counts; each arm's seeds are then
    drawn as in :func:`resample_seeds`. With every item drawn once this is the per-user recall of the user
    bootstrap. Replicates in which no drawn user has a drawn target (possible only with very few items or
    users) are dropped, identically for every arm."""
    users, user_of_pair = np.unique(np.asarray(pair_users), return_inverse=True)
    items, item_of_pair = np.unique(np.asarray(pair_items), return_inverse=True)
    grids = [_as_grid(a) for a in arms]
    if any(g.shape[1] != len(user_of_pair) for g in grids):
        raise ValueError(f"arms cover {[g.shape[1] for g in grids]} pairs, the labels {len(user_of_pair)}")

    def items_by_user(values: np.ndarray) -> sp.csr_matrix:
        """(items x users): each pair's value at (its item, its user)."""
        return sp.csr_matrix((values, (item_of_pair, user_of_pair)), shape=(len(items), len(users)))

    targets = items_by_user(np.ones(len(user_of_pair))).T.tocsr()   # (users x items)
    hits = [[items_by_user(row) for row in grid] for grid in grids]
    children = np.random.SeedSequence(seed).spawn(3)
    users_rng, item_rng = np.random.default_rng(children[0]), np.random.default_rng(children[1])
    seed_rngs = [np.random.default_rng(c) for c in children[2].spawn(len(grids))]
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // max(len(users), len(items)))
    per_seed: list[list[np.ndarray]] = [[] for _ in grids]
    for user_counts, item_counts in zip(draw_counts(len(users), n_resamples, users_rng, chunk),
                                        draw_counts(len(items), n_resamples, item_rng, chunk)):
        # (units x resamples) throughout: every product below is a sparse matrix times contiguous columns
        drawn_items = np.ascontiguousarray(item_counts.T)
        drawn_targets = targets @ drawn_items                       # (users, chunk): targets counted as drawn
        counted = user_counts.T * (drawn_targets > 0)                # users without a drawn target drop out
        per_target = counted / np.maximum(drawn_targets, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            for arm, arm_hits in zip(per_seed, hits):
                # sum_u per_target[u] sum_i h[i, u] drawn[i]: a user's drawn hits over their drawn targets
                arm.append(np.stack([((h @ per_target) * drawn_items).sum(axis=0) for h in arm_hits], axis=1)
                           / counted.sum(axis=0)[:, None])
    means = [np.concatenate(arm) for arm in per_seed]
    defined = np.isfinite(means[0]).all(axis=1)
    return [resample_seeds(m[defined], rng) for m, rng in zip(means, seed_rngs)]
