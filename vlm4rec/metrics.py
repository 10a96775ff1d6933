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
