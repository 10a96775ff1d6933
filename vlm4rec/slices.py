"""Result slices (docs/protocol.md, "Slices"): where a method wins or loses, by user and by test item.

Three slice kinds, all read from the prepared tables and a method's test output (``topk`` rows in
the order of ``users``, per-user metrics with a ``user_idx`` column):

``user_history``        users grouped by the length of the history they are ranked from at test time
                        (train + validation positives); the value is the macro mean of a per-user
                        metric over the group's users.
``item_popularity``     test (user, item) pairs grouped by the test item's popularity in the test-time
                        history (head / tail / cold, :func:`item_popularity_groups`).
``image_availability``  test pairs grouped by whether the test item has an image.

Item slices cannot use per-user metrics (a user's test items fall into several groups), so their value
is a pair-level *micro* recall: the share of the group's test pairs whose item is in that user's top-k.
Every group is reported, empty ones with ``n = 0`` and a NaN value, so that no slice disappears.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from vlm4rec.data import PreparedData

POPULARITY_LABELS: tuple[str, ...] = ("head", "tail", "cold")
IMAGE_LABELS: tuple[str, ...] = ("with image", "without image")
HISTORY_BINS: tuple[float, ...] = (0, 10, 25, 50, 100, math.inf)
HISTORY_SPLITS: tuple[str, ...] = ("train", "val")
MethodOutput = tuple[np.ndarray, np.ndarray, pd.DataFrame]  # (topk, users, per-user metrics)


def _categorical(labels: Sequence[str] | np.ndarray, categories: Sequence[str], index: pd.Index,
                 name: str) -> pd.Series:
    """Labels as an ordered categorical Series, so that tables list groups in their natural order."""
    values = pd.Categorical(labels, categories=list(categories), ordered=True)
    return pd.Series(values, index=index, name=name)


def item_popularity_groups(interactions: pd.DataFrame, n_items: int, head_share: float = 0.2) -> pd.Series:
    """Label every item 0..n_items-1 as ``head``, ``tail`` or ``cold`` by its popularity in the history
    that test-time models are fitted on (train + validation).

    Popularity = number of distinct users with a train or validation positive on the item. Items with
    popularity 0 are ``cold`` (no positive in the history test-time models are fitted on; the definition of
    ``cold_items_in_test`` in :func:`vlm4rec.data.dataset_counts`). The other ("warm")
    items are ranked by popularity, descending, ties broken by ascending item index; the first
    ``ceil(head_share * n_warm)`` are ``head``, the rest ``tail``. Test interactions never enter the labels.
    """
    if not 0 < head_share < 1:
        raise ValueError(f"head_share must be in (0, 1), got {head_share}")
    seen = interactions.loc[interactions["split"].isin(HISTORY_SPLITS), ["user_idx", "item_idx"]]
    items = seen["item_idx"].to_numpy()
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"train / validation interactions hold item indices outside 0..{n_items - 1}")
    popularity = np.bincount(seen.drop_duplicates()["item_idx"].to_numpy(), minlength=n_items)
    warm = np.flatnonzero(popularity > 0)
    ranked = warm[np.lexsort((warm, -popularity[warm]))]
    labels = np.full(n_items, "cold", dtype=object)
    n_head = math.ceil(round(head_share * len(warm), 9))  # round: 0.3 * 10 is 3.0000000000000004
    labels[ranked[:n_head]] = "head"
    labels[ranked[n_head:]] = "tail"
    return _categorical(labels, POPULARITY_LABELS, pd.RangeIndex(n_items, name="item_idx"),
                        "popularity_group")


def image_availability_groups(items: pd.DataFrame) -> pd.Series:
    """Label every item ``with image`` or ``without image`` from the ``has_image`` column."""
    labels = np.where(items["has_image"].to_numpy(dtype=bool), IMAGE_LABELS[0], IMAGE_LABELS[1])
    return _categorical(labels, IMAGE_LABELS, pd.Index(items["item_idx"].to_numpy(), name="item_idx"),
                        "image_group")


def history_bin_labels(bins: Sequence[float]) -> list[str]:
    """Readable labels of the integer bins (lo, hi]: ``"lo+1-hi"``, ``"hi"`` when that is one count,
    ``">lo"`` for an infinite upper edge."""
    labels = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        if math.isinf(hi):
            labels.append(f">{int(lo)}")
        elif int(lo) + 1 == int(hi):
            labels.append(f"{int(hi)}")
        else:
            labels.append(f"{int(lo) + 1}-{int(hi)}")
    return labels


def history_lengths(interactions: pd.DataFrame) -> pd.Series:
    """Distinct train + validation positives per user (the history test-time models rank from), for every
    user in ``interactions`` (0 for users with none)."""
    in_history = interactions["split"].isin(HISTORY_SPLITS)
    return (interactions.loc[in_history].drop_duplicates(["user_idx", "item_idx"]).groupby("user_idx").size()
            .reindex(np.unique(interactions["user_idx"].to_numpy()), fill_value=0))


def user_history_groups(interactions: pd.DataFrame,
                        bins: Sequence[float] = HISTORY_BINS) -> pd.Series:
    """Label every user in ``interactions`` by the number of positives in their test-time history.

    The test-time history is train + validation (docs/protocol.md, "Split and histories"), so that is what is counted.
    ``bins`` are integer edges of right-closed intervals (lo, hi]; the default gives ``1-10``,
    ``11-25``, ``26-50``, ``51-100``, ``>100``. Users with no train or validation positive (possible
    under the global-time split) get their own group ``0``; a count outside every bin is an error.
    """
    edges = [float(b) for b in bins]
    if len(edges) < 2 or edges[0] < 0 or any(hi <= lo for lo, hi in zip(edges[:-1], edges[1:])):
        raise ValueError(f"bins must be at least two strictly increasing edges >= 0, got {list(bins)}")
    if any(not (math.isinf(b) or b == int(b)) for b in edges):
        raise ValueError(f"bins must be integer counts (or inf), got {list(bins)}")
    counts = history_lengths(interactions)
    values = counts.to_numpy()
    position = np.searchsorted(edges, values, side="left")  # (edges[p-1], edges[p]] holds the value
    covered = (values == 0) | ((position >= 1) & (position < len(edges)))
    if not covered.all():
        raise ValueError(f"{int((~covered).sum())} users have a history length outside the bins "
                         f"{list(bins)}, e.g. {int(values[~covered][0])}")
    names = ["0"] + history_bin_labels(edges)
    labels = np.asarray(names, dtype=object)[np.where(values == 0, 0, position)]
    return _categorical(labels, names, pd.Index(counts.index.to_numpy(), name="user_idx"),
                        "history_group")


def _groups_of(keys: np.ndarray, groups: pd.Series, what: str) -> pd.api.extensions.ExtensionArray:
    """The group of each key, keeping the groups' dtype (a categorical keeps its order and empty
    categories); a key without a group is an error (nothing is silently dropped)."""
    found = groups.reindex(keys)
    if found.isna().any():
        missing = keys[found.isna().to_numpy()]
        raise ValueError(f"{len(missing)} {what} have no group, e.g. {missing[:5].tolist()}")
    return found.array


def per_user_slice_table(per_user: pd.DataFrame, groups: pd.Series, metrics: Sequence[str]) -> pd.DataFrame:
    """Macro mean of each metric over the users of each group: columns slice, n_users, *metrics.

    One row per group category (empty groups have n_users 0 and NaN means)."""
    unknown = [m for m in metrics if m not in per_user.columns]
    if unknown:
        raise ValueError(f"metrics {unknown} are not per-user columns (have {list(per_user.columns)})")
    user_groups = _groups_of(per_user["user_idx"].to_numpy(), groups, "users")
    frame = per_user[list(metrics)].assign(slice=user_groups)
    grouped = frame.groupby("slice", observed=False, sort=True)
    table = grouped[list(metrics)].mean()
    table.insert(0, "n_users", grouped.size())
    return table.reset_index()


def pair_hits(topk: np.ndarray, users: np.ndarray, interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Every test (user, item) pair with ``hit`` = whether the item is in that user's top-``k``.

    ``topk[r]`` is the ranked list of ``users[r]``; every user with a test pair must be among
    ``users`` (evaluation ranks exactly the users with test items)."""
    topk, users = np.asarray(topk), np.asarray(users, dtype=np.int64)
    if topk.ndim != 2 or len(users) != topk.shape[0]:
        raise ValueError(f"topk of shape {topk.shape} does not hold one ranked list per user ({len(users)})")
    if not 1 <= k <= topk.shape[1]:
        raise ValueError(f"k={k} must be in 1..{topk.shape[1]} (the ranked list length)")
    pairs = interactions.loc[interactions["split"] == "test", ["user_idx", "item_idx"]].reset_index(drop=True)
    row_of = pd.Series(np.arange(len(users)), index=users)
    rows = row_of.reindex(pairs["user_idx"].to_numpy())
    if rows.isna().any():
        missing = np.unique(pairs["user_idx"].to_numpy()[rows.isna().to_numpy()])
        raise ValueError(f"{len(missing)} users with test items have no ranked list, "
                         f"e.g. {missing[:5].tolist()}")
    width = int(max(topk.max(initial=0), pairs["item_idx"].max() if len(pairs) else 0)) + 1
    ranked_keys = np.arange(len(users), dtype=np.int64)[:, None] * width + topk[:, :k]
    pair_keys = rows.to_numpy(dtype=np.int64) * width + pairs["item_idx"].to_numpy(dtype=np.int64)
    return pairs.assign(hit=np.isin(pair_keys, ranked_keys))


def item_slice_recall(topk: np.ndarray, users: np.ndarray, interactions: pd.DataFrame,
                      item_groups: pd.Series, k: int) -> pd.DataFrame:
    """Pair-level micro recall@k of test pairs grouped by the test item's group.

    For each group: n_pairs test (user, item) pairs, hits = pairs whose item is in the user's
    top-``k``, recall = hits / n_pairs (NaN for an empty group). Columns slice, n_pairs, hits, recall.
    """
    pairs = pair_hits(topk, users, interactions, k)
    pairs["slice"] = _groups_of(pairs["item_idx"].to_numpy(), item_groups, "test items")
    grouped = pairs.groupby("slice", observed=False, sort=True)["hit"]
    table = pd.DataFrame({"n_pairs": grouped.size(), "hits": grouped.sum().astype(np.int64)})
    table["recall"] = table["hits"] / table["n_pairs"].where(table["n_pairs"] > 0)
    return table.reset_index()


def per_user_recall_on(topk: np.ndarray, users: np.ndarray, interactions: pd.DataFrame, items: np.ndarray,
                       k: int) -> pd.DataFrame:
    """Per-user recall@k over the user's test items that are in ``items`` (e.g. the cold ones): hits among
    them / their number, for every user with at least one (columns user_idx, n_items, recall@k). Unlike
    the pair-level slice recall this is one value per user, so it takes paired tests and user bootstraps."""
    pairs = pair_hits(topk, users, interactions, k)
    pairs = pairs[np.isin(pairs["item_idx"].to_numpy(), np.asarray(items))]
    grouped = pairs.groupby("user_idx")["hit"]
    table = pd.DataFrame({"n_items": grouped.size(), f"recall@{k}": grouped.mean()})
    return table.reset_index()


def slices_for_methods(results: dict[str, MethodOutput], prepared: PreparedData, k: int,
                       metrics: Sequence[str] | None = None, head_share: float = 0.2,
                       bins: Sequence[float] = HISTORY_BINS) -> pd.DataFrame:
    """All slices of all methods in long format: method, slice_kind, slice, metric, n, value.

    ``results`` maps a method name to (topk, users, per-user metrics) of its test evaluation.
    ``user_history`` rows hold the macro mean of each per-user metric in ``metrics`` (default
    ``recall@k`` and ``ndcg@k``) with n = users; ``item_popularity`` and ``image_availability`` rows
    hold the pair micro recall (metric ``pair_recall@k``) with n = test pairs.
    """
    metrics = list(metrics) if metrics is not None else [f"recall@{k}", f"ndcg@{k}"]
    inter = prepared.interactions
    user_groups = user_history_groups(inter, bins)
    item_groups = {"item_popularity": item_popularity_groups(inter, prepared.n_items, head_share),
                   "image_availability": image_availability_groups(prepared.items)}
    frames = []
    for method, (topk, users, per_user) in results.items():
        if set(per_user["user_idx"]) != set(np.asarray(users).tolist()):
            raise ValueError(f"{method}: per-user metrics and ranked lists cover different users")
        table = per_user_slice_table(per_user, user_groups, metrics)
        long = table.melt(id_vars=["slice", "n_users"], value_vars=metrics, var_name="metric")
        frames.append(long.rename(columns={"n_users": "n"}).assign(method=method, slice_kind="user_history"))
        for kind, groups in item_groups.items():
            pair_table = item_slice_recall(topk, users, inter, groups, k)
            frames.append(pd.DataFrame({"method": method, "slice_kind": kind, "slice": pair_table["slice"],
                                        "metric": f"pair_recall@{k}", "n": pair_table["n_pairs"],
                                        "value": pair_table["recall"]}))
    columns = ["method", "slice_kind", "slice", "metric", "n", "value"]
    out = pd.concat([f.assign(slice=f["slice"].astype(str))[columns] for f in frames], ignore_index=True)
    return out.astype({"n": np.int64, "value": np.float64})
