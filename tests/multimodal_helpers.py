"""Shared pieces of the vlm4rec.multimodal tests: tiny-data training settings, small histories and their
dense normalised graph, and a small prepared dataset whose item attribute drives preference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vlm4rec.data import PreparedData
from vlm4rec.splits import History

# Tiny data (tens of users): small batches and a high learning rate train in a fraction of a second.
TINY = dict(batch_size=64, lr=0.02, epochs=30)


def random_history(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    dense = (np.random.default_rng(seed).random((n_users, n_items)) < density).astype(np.float32)
    dense[0] = 0.0      # a user without history
    dense[:, -1] = 0.0  # an item nobody saw
    return sp.csr_matrix(dense)


def dense_normalized_adjacency(history: np.ndarray) -> np.ndarray:
    """D^-1/2 A D^-1/2 of A = [[0, R], [R^T, 0]], written out with dense matrices."""
    n_users, n_items = history.shape
    a = np.zeros((n_users + n_items, n_users + n_items))
    a[:n_users, n_users:] = history
    a[n_users:, :n_users] = history.T
    degree = a.sum(axis=1)
    scale = np.array([1 / np.sqrt(d) if d > 0 else 0.0 for d in degree])
    return scale[:, None] * a * scale[None, :]


def history_of(dense: np.ndarray) -> History:
    matrix = sp.csr_matrix(np.asarray(dense, dtype=np.float32))
    return History(matrix=matrix, recency=matrix.copy())


@dataclass(frozen=True)
class AttributeData:
    """Users like the items of one attribute class; the image modality shows the class. ``cold`` items
    never occur in train or validation, only as test positives."""

    prepared: PreparedData
    image: np.ndarray         # (n_items, d) class centroid + noise
    item_class: np.ndarray
    user_class: np.ndarray
    cold: np.ndarray          # bool per item


def attribute_data(seed: int = 0, n_classes: int = 3, warm_per_class: int = 18, cold_per_class: int = 6,
                   users_per_class: int = 30, n_train: int = 8, n_val: int = 2, n_test_warm: int = 1,
                   n_test_cold: int = 3, d: int = 8) -> AttributeData:
    """Per user, in time order: ``n_train`` then ``n_val`` then ``n_test_warm`` warm items of their class,
    then ``n_test_cold`` cold items of their class (all test)."""
    rng = np.random.default_rng(seed)
    per_class = warm_per_class + cold_per_class
    item_class = np.repeat(np.arange(n_classes), per_class)
    cold = np.tile(np.arange(per_class) >= warm_per_class, n_classes)
    user_class = np.repeat(np.arange(n_classes), users_per_class)
    rows = []
    for user, liked in enumerate(user_class):
        warm = rng.choice(np.flatnonzero((item_class == liked) & ~cold), n_train + n_val + n_test_warm, replace=False)
        cold_items = rng.choice(np.flatnonzero((item_class == liked) & cold), n_test_cold, replace=False)
        splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (n_test_warm + n_test_cold)
        for t, (item, split) in enumerate(zip(np.concatenate([warm, cold_items]), splits)):
            rows.append((user, int(item), t, 5.0, split))
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "rating", "split"])
    n_items, n_users = len(item_class), len(user_class)
    items = pd.DataFrame({"item_idx": np.arange(n_items), "item_id": np.arange(n_items).astype(str)})
    users = pd.DataFrame({"user_idx": np.arange(n_users), "user_id": np.arange(n_users).astype(str)})
    prepared = PreparedData(items=items, users=users, interactions=inter)
    centroids = rng.normal(size=(n_classes, d))
    image = (centroids[item_class] + 0.3 * rng.normal(size=(n_items, d))).astype(np.float32)
    return AttributeData(prepared, image, item_class, user_class, cold)


def shuffled_rows(x: np.ndarray, seed: int = 1) -> np.ndarray:
    """The same vectors assigned to other items: the modality keeps its structure but loses the signal."""
    return x[np.random.default_rng(seed).permutation(len(x))]
