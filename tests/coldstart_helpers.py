"""Shared pieces of the vlm4rec.coldstart tests: a planted new-item data set whose new items' appeal is in
their content, a tiny shared backbone, the "ranked among the new items" metric, and a numpy forward pass of
the dense layers (read from a torch module's parameters) for the dense re-implementations."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from torch import nn

from vlm4rec.cold_start import FittedOnce, NewItemData
from vlm4rec.coldstart import default_backbone
from vlm4rec.matching import Recommender
from vlm4rec.splits import History
from vlm4rec.training import TrainingOptions

TINY_TRAINING = dict(epochs=15, batch_size=64, lr=0.01, eval_every=5)


@dataclass(frozen=True)
class PlantedNewItems:
    """Users of cluster k like the items of cluster k; the warm history holds warm items only, the targets are
    each user's cluster among the new items, and the content is the cluster centroid plus noise."""

    history: History
    content: np.ndarray       # (n_items, d)
    item_cluster: np.ndarray
    user_cluster: np.ndarray
    new_items: np.ndarray

    def shuffled_content(self, seed: int = 1) -> np.ndarray:
        """The same content rows given to other items (the signal is gone, the distribution kept)."""
        return self.content[np.random.default_rng(seed).permutation(len(self.content))]


def planted_new_items(seed: int = 0, n_clusters: int = 3, warm_per_cluster: int = 12, new_per_cluster: int = 6,
                      users_per_cluster: int = 15, history_size: int = 6, d: int = 8,
                      noise: float = 0.4) -> PlantedNewItems:
    rng = np.random.default_rng(seed)
    per_cluster = warm_per_cluster + new_per_cluster
    item_cluster = np.repeat(np.arange(n_clusters), per_cluster)
    is_new = np.tile(np.arange(per_cluster) >= warm_per_cluster, n_clusters)
    user_cluster = np.repeat(np.arange(n_clusters), users_per_cluster)
    history = np.zeros((len(user_cluster), len(item_cluster)), dtype=np.float32)
    for user, cluster in enumerate(user_cluster):
        warm = np.flatnonzero((item_cluster == cluster) & ~is_new)
        history[user, rng.choice(warm, history_size, replace=False)] = 1.0
    centroids = rng.normal(size=(n_clusters, d))
    content = (centroids[item_cluster] + noise * rng.normal(size=(len(item_cluster), d))).astype(np.float32)
    matrix = sp.csr_matrix(history)
    return PlantedNewItems(History(matrix, matrix.copy()), content, item_cluster, user_cluster,
                           np.flatnonzero(is_new))


def shared_backbone(data: PlantedNewItems, seed: int = 0) -> FittedOnce:
    """A tiny LightGCN fitted once on the planted warm history (shared by every model of a test)."""
    backbone = FittedOnce(default_backbone(TrainingOptions(seed=seed), dim=16, layers=2, epochs=40, batch_size=64,
                                           lr=0.05))
    return backbone.fit(data.history)


@pytest.fixture(scope="module")
def planted() -> PlantedNewItems:
    """The planted new-item data (a module-scoped fixture: import it into a test module)."""
    return planted_new_items()


@pytest.fixture(scope="module")
def backbone(planted: PlantedNewItems) -> FittedOnce:
    """The tiny backbone fitted once on ``planted`` (a module-scoped fixture: import it into a test module)."""
    return shared_backbone(planted)


def new_item_precision(model: Recommender, data: PlantedNewItems) -> float:
    """Mean share of each user's top-``new_per_cluster`` new items (ranked among the new items only) that are of
    the user's cluster."""
    scores = model.score_block(np.arange(data.history.n_users))[:, data.new_items]
    k = len(data.new_items) // len(np.unique(data.item_cluster))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((data.item_cluster[data.new_items][top] == data.user_cluster[:, None]).mean())


def normalised(content: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float64."""
    norms = np.linalg.norm(content.astype(np.float64), axis=1, keepdims=True)
    return np.divide(content, norms, out=np.zeros(content.shape), where=norms > 0)


def backbone_vectors(backbone: FittedOnce) -> tuple[np.ndarray, np.ndarray]:
    """The fitted backbone's (user, item) vectors, float64."""
    return backbone.model.user_factors.astype(np.float64), backbone.model.item_factors.astype(np.float64)


def dense_forward(layers: nn.Sequential, x: np.ndarray) -> np.ndarray:
    """The layers' evaluation-mode forward pass written out in numpy (Linear, BatchNorm1d with its running
    statistics, Tanh, ReLU), float64."""
    x = np.asarray(x, dtype=np.float64)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            x = x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        elif isinstance(layer, nn.BatchNorm1d):
            mean, var = layer.running_mean.double().numpy(), layer.running_var.double().numpy()
            gamma, beta = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
            x = (x - mean) / np.sqrt(var + layer.eps) * gamma + beta
        elif isinstance(layer, nn.Tanh):
            x = np.tanh(x)
        elif isinstance(layer, nn.ReLU):
            x = np.maximum(x, 0.0)
        else:
            raise TypeError(f"no dense formulation for {type(layer).__name__}")
    return x


def planted_new_item_data(planted: PlantedNewItems) -> NewItemData:
    """The strict protocol's data for ``planted``: the warm history is train; each user's new items of their
    cluster are validation (the first half of each cluster's new items) or test targets (the rest)."""
    per_cluster = len(planted.new_items) // len(np.unique(planted.item_cluster))
    first_half = (np.arange(len(planted.new_items)) % per_cluster) < per_cluster // 2
    val_items, test_items = planted.new_items[first_half], planted.new_items[~first_half]
    users, items = planted.history.matrix.nonzero()
    rows = [(u, i, 0, "train") for u, i in zip(users, items)]
    for user, cluster in enumerate(planted.user_cluster):
        for item in planted.new_items[planted.item_cluster[planted.new_items] == cluster]:
            rows.append((user, item, 1, "val" if item in val_items else "test"))
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "split"])
    return NewItemData.from_new_item_split(inter, planted.history.n_users, planted.history.n_items, val_items,
                                       test_items, "cold")
