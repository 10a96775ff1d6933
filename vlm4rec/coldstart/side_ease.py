"""Side-information EASE^R (Jeunen, Van Balen, Goethals: "Closed-Form Models for Collaborative Filtering with
Side-Information", RecSys 2020): closed-form item-item models whose weights also reconstruct the items'
content, so that a new item (no interaction) is scored through its content.

X is the binary warm history (users x items); T = C^T is the content as extra "users" (d x items), C the
L2-normalised content (an item without content has a zero column). EASE^R's closed form on a Gram matrix G
(Steck 2019; :func:`vlm4rec.baselines.ease_weights_of_gram`): P = (G + l2 I)^-1, B = I - P diag(1/diag P).

``CollectiveEASE`` (cEASE^R): EASE^R on X stacked over alpha T, i.e. G = X^T X + alpha^2 C C^T.
``AdditiveEASE``  (Add-EASE^R): B = (1 - beta) B(X^T X, l2) + beta B(C C^T, content_l2).

Score: X_u B over every item. For a new item j, X's column j is zero, so its weights B_ij come from the
content term alone (the content similarity of j to the items in the user's history); a new item without
content has no weights and is scored ``-inf``.

Reference code: the authors' ``olivierjeunen/ease-side-info-recsys-2020`` (``src/TrainModel.py``: cEASE^R
vstacks the history and alpha times the tag matrix, Add-EASE^R blends the two EASE^R models by alpha; both
with the l2 tuned for EASE^R). Deviations: the side information is a dense content embedding, not a binary
tag matrix (so C C^T is the items' cosine similarity); Add-EASE^R's content model has its own ``content_l2``
(a cosine Gram is on another scale than an interaction Gram) and its blend is named ``beta``.
"""
from __future__ import annotations

from abc import abstractmethod

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from vlm4rec.baselines import ease_weights, ease_weights_of_gram, item_gram
from vlm4rec.coldstart.base import ColdStartConfig, ColdStartRecommender
from vlm4rec.memo import ContentMemo, fingerprint, read_only
from vlm4rec.splits import History


class CollectiveEASEConfig(ColdStartConfig):
    """``l2``: EASE^R's ridge weight; ``alpha``: the weight of the content rows (the Gram gets alpha^2 C C^T)."""

    l2: float = Field(default=500.0, gt=0)
    alpha: float = Field(default=1.0, ge=0)


class AdditiveEASEConfig(ColdStartConfig):
    """``l2``: the interaction model's ridge weight; ``content_l2``: the content model's; ``beta``: the
    content model's share of the blend."""

    l2: float = Field(default=500.0, gt=0)
    content_l2: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.5, ge=0, le=1)


#: (model, configuration, warm history and content) -> B: the selection and test phases of the strict
#: protocol fit on the same warm history, so each (content, grid point) is solved once (~55 MB at ML-1M)
_SIDE_WEIGHTS: ContentMemo[np.ndarray] = ContentMemo(size=2)


class SideInfoEASE(ColdStartRecommender):
    """Score = X_u B with item-item weights B from the warm history and the content (:meth:`weights`)."""

    _history: sp.csr_matrix | None = None

    def fit(self, history: History) -> "SideInfoEASE":
        data = self.warm_data(history, backbone=None)
        self._history = data.matrix
        key = (type(self).__name__, self.config.model_dump_json(), fingerprint(data.matrix, data.content))
        self.item_weights = _SIDE_WEIGHTS.get(key, lambda: read_only(
            self.weights(data.matrix, data.content).astype(np.float32)))
        return self

    @abstractmethod
    def weights(self, matrix: sp.csr_matrix, content: np.ndarray) -> np.ndarray:
        """B (items x items) from the binary history and the normalised content."""

    def score_block(self, users: np.ndarray) -> np.ndarray:
        if self._history is None:
            raise RuntimeError(f"{self.name}: call fit(history) before scoring")
        scores = np.asarray(self._history[np.asarray(users, dtype=np.int64)] @ self.item_weights, dtype=np.float32)
        scores[:, self.missing] = -np.inf
        return scores


def content_gram(content: np.ndarray) -> np.ndarray:
    """C C^T of the (items x d) content, float64: the items' cosine similarities for normalised rows."""
    content = content.astype(np.float64)
    return content @ content.T


class CollectiveEASE(SideInfoEASE):
    """cEASE^R (module docstring)."""

    name = "collective_ease"
    config_type = CollectiveEASEConfig
    config: CollectiveEASEConfig

    def weights(self, matrix: sp.csr_matrix, content: np.ndarray) -> np.ndarray:
        return ease_weights_of_gram(item_gram(matrix) + self.config.alpha ** 2 * content_gram(content),
                                    self.config.l2)


class AdditiveEASE(SideInfoEASE):
    """Add-EASE^R (module docstring)."""

    name = "additive_ease"
    config_type = AdditiveEASEConfig
    config: AdditiveEASEConfig

    def weights(self, matrix: sp.csr_matrix, content: np.ndarray) -> np.ndarray:
        beta = self.config.beta
        return ((1 - beta) * ease_weights(matrix, self.config.l2)
                + beta * ease_weights_of_gram(content_gram(content), self.config.content_l2))
