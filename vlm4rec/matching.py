"""Matching engine: one recommender base class, one masking + top-K path for every scorer.

CONTRACT (implementation in progress):

class Recommender(ABC):
    fit(history: History) -> Recommender          # history = train (validation) or train+val (test)
    score_block(users: np.ndarray) -> np.ndarray   # float32 (len(users), n_items); higher is better;
                                                   # -inf allowed (item not scorable, ranked last)

recommend(model, users, exclude: csr_matrix, k, block_size) -> np.ndarray int64 (len(users), k)
    blocked over users; seen items (exclude) masked; top-K by partial sort; ties by item index.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from vlm4rec.splits import History


class Recommender(ABC):
    """A scorer that is fitted on a history and scores blocks of users against all items."""

    name: str = "recommender"

    @abstractmethod
    def fit(self, history: History) -> "Recommender":
        """Learn from (or just remember) the users' histories."""

    @abstractmethod
    def score_block(self, users: np.ndarray) -> np.ndarray:
        """Scores of ``users`` (indices) against every item: float32 (len(users), n_items)."""
