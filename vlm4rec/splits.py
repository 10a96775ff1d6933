"""Train / validation / test splits and the user-history matrices built from them.

Protocols (docs/protocol.md, "Split and histories"), all deterministic with ties broken by item index:

``temporal_ratio`` (default)  per user, positives sorted by (timestamp, item): the last
                              ``max(1, round(test_ratio * n))`` are test, the ``max(1, round(val_ratio * n))``
                              before them validation, the rest train (Python's ``round``).
``leave_last_out``            the last positive is test, the one before it validation.
``random_ratio``              per user, a seeded permutation cut by the same ratios (the reference's
                              60/20/20 with ``val_ratio=0.2, test_ratio=0.2``).
``global_time``               one time cut for everybody: interactions at or after the
                              ``1 - test_ratio`` quantile of all timestamps are test, those at or after
                              the ``1 - test_ratio - val_ratio`` quantile validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLITS = ("train", "val", "test")
Protocol = Literal["temporal_ratio", "leave_last_out", "random_ratio", "global_time"]


@dataclass(frozen=True)
class SplitConfig:
    """Which protocol and its knobs (``params.yaml: split``)."""

    protocol: Protocol = "temporal_ratio"
    val_ratio: float = 0.1
    test_ratio: float = 0.2
    seed: int = 0


def _per_user_cut(n: int, val_ratio: float, test_ratio: float) -> tuple[int, int]:
    """(n_val, n_test) for a user with ``n`` positives under the ratio protocols."""
    n_test = max(1, round(test_ratio * n))
    n_val = max(1, round(val_ratio * n))
    return n_val, n_test


def _labels_from_positions(pos: np.ndarray, n: np.ndarray, n_val: np.ndarray,
                           n_test: np.ndarray) -> np.ndarray:
    """Label position ``pos`` (0-based within a user of size ``n``) as train / val / test."""
    labels = np.full(len(pos), "train", dtype=object)
    labels[pos >= n - n_test - n_val] = "val"
    labels[pos >= n - n_test] = "test"
    return labels


def assign_split(inter: pd.DataFrame, config: SplitConfig) -> np.ndarray:
    """Split labels for ``inter`` (columns user_idx, item_idx, timestamp), in its row order."""
    frame = inter[["user_idx", "item_idx", "timestamp"]].reset_index(drop=True)
    if config.protocol == "global_time":
        ts = frame["timestamp"].to_numpy()
        test_cut = np.quantile(ts, 1 - config.test_ratio)
        val_cut = np.quantile(ts, 1 - config.test_ratio - config.val_ratio)
        labels = np.full(len(ts), "train", dtype=object)
        labels[ts >= val_cut] = "val"
        labels[ts >= test_cut] = "test"
        return labels
    if config.protocol == "random_ratio":
        rng = np.random.default_rng(config.seed)
        key = rng.permutation(len(frame))
        order = np.lexsort((frame["item_idx"].to_numpy(), key, frame["user_idx"].to_numpy()))
    else:
        order = np.lexsort((frame["item_idx"].to_numpy(), frame["timestamp"].to_numpy(),
                            frame["user_idx"].to_numpy()))
    users = frame["user_idx"].to_numpy()[order]
    sizes = np.bincount(users)
    n = sizes[users]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.arange(len(users)) - starts[users]
    if config.protocol == "leave_last_out":
        n_val = np.ones_like(n)
        n_test = np.ones_like(n)
    elif config.protocol in ("temporal_ratio", "random_ratio"):
        cuts = {int(m): _per_user_cut(int(m), config.val_ratio, config.test_ratio) for m in np.unique(n)}
        n_val = np.array([cuts[int(m)][0] for m in n])
        n_test = np.array([cuts[int(m)][1] for m in n])
    else:
        raise ValueError(f"unknown split protocol {config.protocol!r}")
    labels = np.empty(len(frame), dtype=object)
    labels[order] = _labels_from_positions(pos, n, n_val, n_test)
    return labels


@dataclass
class History:
    """Users' histories as sparse matrices (users x items).

    ``matrix`` holds 1.0 for every history interaction; ``recency`` has the same sparsity with the
    interaction's rank from the user's most recent one (0 = latest, stored as rank + 1 so that the
    latest is not an implicit zero). Recency weighting and history caps read it.
    """

    matrix: sp.csr_matrix
    recency: sp.csr_matrix

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]


def binarize(matrix: sp.spmatrix) -> sp.csr_matrix:
    """float32 csr with sorted indices where every stored value > 0 becomes 1 and the rest is dropped."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.data = (out.data > 0).astype(np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def build_history(inter: pd.DataFrame, splits: tuple[str, ...], n_users: int, n_items: int) -> History:
    """History matrices from the interactions whose split is in ``splits``."""
    part = inter[inter["split"].isin(splits)]
    part = part.sort_values(["user_idx", "timestamp", "item_idx"], kind="mergesort")
    users = part["user_idx"].to_numpy()
    items = part["item_idx"].to_numpy()
    sizes = np.bincount(users, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank_from_latest = sizes[users] - 1 - (np.arange(len(users)) - starts[users])
    shape = (n_users, n_items)
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    recency = sp.csr_matrix(((rank_from_latest + 1).astype(np.float32), (users, items)), shape=shape)
    return History(matrix=matrix, recency=recency)


def targets_of(inter: pd.DataFrame, split: str, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary users x items matrix of the ``split`` interactions (the relevant items)."""
    part = inter[inter["split"] == split]
    return sp.csr_matrix((np.ones(len(part), dtype=np.float32),
                          (part["user_idx"].to_numpy(), part["item_idx"].to_numpy())),
                         shape=(n_users, n_items))


DENSE_MEMBERSHIP_CELLS = 1 << 28  # up to 256 MB of bools: a table lookup instead of a binary search


def history_membership(history: sp.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """A test "is each of these flat (user * n_items + item) cells in ``history``": a boolean table of all
    cells where it is small enough (about 6x faster on ML-1M's 24M cells), else a binary search of the
    sorted cells. Build it once to sample from the same history many times."""
    n_items = history.shape[1]
    keys = np.repeat(np.arange(history.shape[0], dtype=np.int64), np.diff(history.indptr)) * n_items
    keys += history.indices
    if history.shape[0] * n_items <= DENSE_MEMBERSHIP_CELLS:
        table = np.zeros(history.shape[0] * n_items, dtype=bool)
        table[keys] = True
        return table.__getitem__
    ordered = np.sort(keys)
    if len(ordered) == 0:
        return lambda probe: np.zeros(probe.shape, dtype=bool)
    return lambda probe: ordered[np.minimum(np.searchsorted(ordered, probe), len(ordered) - 1)] == probe


def sample_negatives(history: sp.csr_matrix, users: np.ndarray, n_negatives: int, rng: np.random.Generator,
                     max_rounds: int = 1000,
                     in_history: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``(len(users), n_negatives)`` items drawn uniformly from those outside each user's history
    (``in_history``: :func:`history_membership` of ``history``, built here if not given)."""
    n_items = history.shape[1]
    full = np.flatnonzero(np.diff(history.indptr)[users] >= n_items)
    if len(full):
        raise ValueError(f"{len(full)} users have every item in their history; no negatives exist")
    in_history = history_membership(history) if in_history is None else in_history
    negatives = rng.integers(0, n_items, size=(len(users), n_negatives))
    for _ in range(max_rounds):
        clash = in_history(users[:, None].astype(np.int64) * n_items + negatives)
        if not clash.any():
            return negatives
        negatives[clash] = rng.integers(0, n_items, size=int(clash.sum()))
    raise RuntimeError(f"negative sampling did not converge in {max_rounds} rounds")


NewItemVariant = Literal["time", "random"]


def new_items(inter: pd.DataFrame, cold_share: float = 0.1, val_share: float = 0.5,
              variant: NewItemVariant = "time", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(validation new items, test new items), disjoint, for the strict new-item protocol (``cold_share``
    keeps its params.yaml name: the share of items held out as new).

    ``time``: items ordered by their first positive (timestamp, then item index); the last
    ``round(cold_share * n)`` of the ``n`` items with a positive are new, the earlier
    ``round(val_share * n_new)`` of them validation, the later ones test (so test items are the newest).
    ``random``: a seeded permutation of the items picks the new ones and their validation part.
    """
    if not 0 < cold_share < 1 or not 0 < val_share < 1:
        raise ValueError(f"cold_share and val_share must be in (0, 1), got {cold_share} and {val_share}")
    first = inter.groupby("item_idx")["timestamp"].min()
    items = first.index.to_numpy(dtype=np.int64)
    if variant == "time":
        ordered = items[np.lexsort((items, first.to_numpy()))]
    elif variant == "random":
        ordered = items[np.random.default_rng(seed).permutation(len(items))]
    else:
        raise ValueError(f"unknown cold-start variant {variant!r}; expected time or random")
    n_new = round(cold_share * len(items))
    n_val = round(val_share * n_new)
    if n_val < 1 or n_new - n_val < 1:
        raise ValueError(f"{len(items)} items with cold_share={cold_share} and val_share={val_share} "
                         "leave no validation or no test new item")
    new = ordered[len(items) - n_new:]
    return np.sort(new[:n_val]), np.sort(new[n_val:])


def assign_new_item_split(inter: pd.DataFrame, val_items: np.ndarray, test_items: np.ndarray,
                          warm_test: np.ndarray | None = None) -> np.ndarray:
    """Split labels for the strict new-item protocol, in ``inter``'s row order: every interaction on a
    validation (test) new item is ``val`` (``test``); of the others, those ``warm_test`` marks (bool per row,
    e.g. the main split's test part) are ``warm_test``, held out for the warm and hybrid settings, and the rest
    ``train``. No interaction of a new item is ever trained on; the split of the new items is by item, not by
    time (a warm interaction after the cut stays in training, as a deployed model keeps learning on its
    catalogue while new items arrive)."""
    if np.intersect1d(val_items, test_items).size:
        raise ValueError("validation and test new items must be disjoint")
    item = inter["item_idx"].to_numpy()
    labels = np.full(len(item), "train", dtype=object)
    if warm_test is not None:
        if len(warm_test) != len(item):
            raise ValueError(f"warm_test marks {len(warm_test)} rows, the interactions have {len(item)}")
        labels[np.asarray(warm_test, dtype=bool)] = "warm_test"
    labels[np.isin(item, val_items)] = "val"
    labels[np.isin(item, test_items)] = "test"
    return labels
