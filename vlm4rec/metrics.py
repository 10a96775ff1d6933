"""Top-K ranking metrics per user (docs/protocol.md, "Metrics") and catalogue coverage.

For a user with relevant set G and ranked list r_1..r_K (binary relevance):
recall@k = hits@k / |G|; precision@k = hits@k / k; hit_rate@k = [hits@k > 0];
ndcg@k = sum_{p <= k} rel_p / log2(p + 1) over the same sum for min(|G|, k) relevant items at the top;
mrr@k = 1 / (rank of the first hit) if it is within k, else 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

CHANCE = "chance"  # the method name of :func:`chance_metrics`' rows in tables, tests and figures


def _check_topk(topk: np.ndarray, n_items: int, ks: Sequence[int]) -> None:
    """Ranked lists must be in range, hold each item at most once, and be long enough for every k."""
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-d (users, K), got shape {topk.shape}")
    if len(ks) == 0 or min(ks) < 1 or max(ks) > topk.shape[1]:
        raise ValueError(f"every k in {list(ks)} must be in 1..{topk.shape[1]} (the ranked list length)")
    if topk.size and (topk.min() < 0 or topk.max() >= n_items):
        raise ValueError(f"topk holds item indices outside 0..{n_items - 1}")
    ordered = np.sort(topk, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise ValueError("topk lists an item twice for some user")


def hit_matrix(topk: np.ndarray, targets: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """Boolean (len(users), K): whether the item at each rank is a target of that user."""
    n_items = targets.shape[1]
    coo = targets.tocoo()
    target_keys = coo.row.astype(np.int64) * n_items + coo.col
    ranked_keys = users[:, None].astype(np.int64) * n_items + topk
    return np.isin(ranked_keys, target_keys)


def ranking_metrics(topk: np.ndarray, targets: sp.csr_matrix, users: np.ndarray,
                    ks: Sequence[int]) -> pd.DataFrame:
    """Per-user metrics: one row per user (column ``user_idx``), columns ``{metric}@{k}``.

    ``topk[r]`` is the ranked list of ``users[r]``; ``targets`` (users x items) marks relevant items.
    Every user passed must have at least one target (users without targets are not evaluated).
    """
    users = np.asarray(users, dtype=np.int64)
    topk = np.asarray(topk)
    targets = sp.csr_matrix(targets)
    if len(users) != topk.shape[0]:
        raise ValueError(f"{len(users)} users but {topk.shape[0]} ranked lists")
    _check_topk(topk, targets.shape[1], ks)
    n_relevant = np.diff(targets.indptr)[users]
    if (n_relevant == 0).any():
        raise ValueError(f"{int((n_relevant == 0).sum())} users have no targets; evaluate only users "
                         "with targets in this split")
    hits = hit_matrix(topk, targets, users)
    discount = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))
    ideal_cumulative = np.cumsum(discount)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), topk.shape[1])
    columns: dict[str, np.ndarray] = {"user_idx": users}
    for k in ks:
        n_hits = hits[:, :k].sum(axis=1)
        dcg = hits[:, :k] @ discount[:k]
        idcg = ideal_cumulative[np.minimum(n_relevant, k) - 1]
        columns[f"recall@{k}"] = n_hits / n_relevant
        columns[f"ndcg@{k}"] = dcg / idcg
        columns[f"hit_rate@{k}"] = (n_hits > 0).astype(np.float64)
        columns[f"mrr@{k}"] = np.where(first_hit < k, 1.0 / (first_hit + 1), 0.0)
        columns[f"precision@{k}"] = n_hits / k
    return pd.DataFrame(columns)


def catalogue_coverage(topk: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one user's top-``k``."""
    if not 1 <= k <= topk.shape[1]:
        raise ValueError(f"k={k} must be in 1..{topk.shape[1]}")
    return len(np.unique(topk[:, :k])) / n_items


def summarize(per_user: pd.DataFrame) -> dict[str, float]:
    """Macro averages over users of every metric column, plus ``n_users``."""
    metric_columns = [c for c in per_user.columns if c != "user_idx"]
    summary = {c: float(per_user[c].mean()) for c in metric_columns}
    summary["n_users"] = len(per_user)
    return summary


def chance_metrics(n_candidates: np.ndarray, n_relevant: np.ndarray, users: np.ndarray,
                   ks: Sequence[int]) -> pd.DataFrame:
    """The exact expected value of every metric of :func:`ranking_metrics` for a uniformly random ranking of
    each user's ``n_candidates`` items, ``n_relevant`` of them relevant: chance, as per-user values that enter
    tables and paired tests like a method's.

    With n candidates, g relevant and q_p = C(n - g, p) / C(n, p) (no hit in the first p ranks): each rank
    holds a relevant item with probability g / n, so E[hits@k] = min(k, n) g / n (recall, precision) and
    E[DCG@k] = (g / n) sum_{p <= min(k, n)} 1 / log2(p + 1) over the ideal DCG; hit_rate@k = 1 - q_k; the
    first hit is at rank p with probability q_{p-1} g / (n - p + 1), so mrr@k = sum_{p <= k} of that / p.
    """
    n = np.asarray(n_candidates, dtype=np.float64)[:, None]
    g = np.asarray(n_relevant, dtype=np.float64)[:, None]
    if (g < 1).any() or (g > n).any():
        raise ValueError("every user needs 1 <= relevant items <= candidates for a chance reference")
    ranks = np.arange(1, max(ks) + 1, dtype=np.float64)[None, :]
    inside = ranks <= n                                              # ranks a list of n candidates fills
    no_hit_step = np.where(inside, np.clip(n - g - ranks + 1, 0, None) / np.maximum(n - ranks + 1, 1), 0.0)
    no_hit = np.cumprod(np.where(inside, no_hit_step, 1.0), axis=1)  # q_p for p = 1..K
    before = np.concatenate([np.ones_like(n), no_hit[:, :-1]], axis=1)  # q_{p-1}
    first_hit = np.where(inside, before * g / np.maximum(n - ranks + 1, 1), 0.0)
    relevant_at = np.where(inside, g / n, 0.0)
    discount = 1.0 / np.log2(ranks + 1)
    ideal_cumulative = np.cumsum(discount[0])
    columns: dict[str, np.ndarray] = {"user_idx": np.asarray(users, dtype=np.int64)}
    for k in ks:
        hits = relevant_at[:, :k].sum(axis=1)
        idcg = ideal_cumulative[np.minimum(g[:, 0], k).astype(np.int64) - 1]
        columns[f"recall@{k}"] = hits / g[:, 0]
        columns[f"ndcg@{k}"] = (relevant_at[:, :k] * discount[:, :k]).sum(axis=1) / idcg
        columns[f"hit_rate@{k}"] = 1.0 - no_hit[:, k - 1]
        columns[f"mrr@{k}"] = (first_hit[:, :k] / ranks[:, :k]).sum(axis=1)
        columns[f"precision@{k}"] = hits / k
    return pd.DataFrame(columns)


def target_pairs(targets: sp.csr_matrix, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) of every relevant item of ``users``, in the order of ``users`` then item index."""
    rows = sp.csr_matrix(targets)[np.asarray(users, dtype=np.int64)].tocoo()
    order = np.lexsort((rows.col, rows.row))
    return np.asarray(users, dtype=np.int64)[rows.row[order]], rows.col[order].astype(np.int64)


def pair_hits(topk: np.ndarray, users: np.ndarray, pair_users: np.ndarray, pair_items: np.ndarray,
              k: int) -> np.ndarray:
    """Whether each (user, item) pair's item is in that user's top-``k`` (``topk[r]`` ranks ``users[r]``):
    the per-pair hits that a user's recall@k averages, for statistics that resample items too."""
    row_of = pd.Series(np.arange(len(users)), index=np.asarray(users, dtype=np.int64))
    rows = row_of.loc[pair_users].to_numpy()
    return (topk[rows, :k] == np.asarray(pair_items)[:, None]).any(axis=1)
