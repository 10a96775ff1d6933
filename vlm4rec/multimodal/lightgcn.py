"""LightGCN (He, Deng, Wang, Li, Zhang, Wang: "LightGCN: Simplifying and Powering Graph Convolution
Network for Recommendation", SIGIR 2020).

One embedding per user and item (the ego embeddings E0), propagated K times over the symmetric-normalised
user-item graph without weights or non-linearities; the final embedding is the mean over layers 0..K
(alpha_k = 1 / (K + 1)); score = dot product. Loss: BPR on the final embeddings plus ``l2`` * 0.5 * ||ego
embeddings of the batch's users, positives and negatives||^2 / batch (the paper's L2 on E0, as the
authors' implementations apply it per batch). FREEDOM and SMORE reuse this branch.

Reference code: MMRec's ``lightgcn.py`` (the LightGCN every FREEDOM and SMORE table is compared with)
and the authors' TensorFlow code both initialise the user and item tables Xavier-uniform (``init=
"reference"``); the authors' PyTorch port draws N(0, 0.1^2) (``init="normal"``, the fast regime).
MMRec's ``EmbLoss`` penalises the sum of the three ego blocks' Frobenius norms (not squared) / batch; by
default (``l2_norm="squared"``) this follows the paper (squared, halved), so an ``l2`` value is not MMRec's
``reg_weight`` value; ``l2_norm="frobenius"`` applies ``EmbLoss`` itself, the scale of MMRec's grid
(``LightGCN.yaml``: layers 1-4, reg_weight 1e-2..1e-6; the full scale's grid).
"""
from __future__ import annotations

import scipy.sparse as sp
import torch

from vlm4rec.methods import L2Norm, LightGCNConfig
from vlm4rec.multimodal.graphs import GraphOperator, interaction_graph, layer_mean
from vlm4rec.multimodal.bpr import BPRModel, BPRRecommender, Init, bpr_rows_loss, embedding_tables, l2_penalty


class LightGCNModel(BPRModel):
    """The user-item branch: ego embeddings (users first) and their layer-mean propagation."""

    def __init__(self, history: sp.csr_matrix, dim: int, layers: int, l2: float, generator: torch.Generator,
                 device: torch.device, init: Init = "normal", l2_norm: L2Norm = "squared"):
        super().__init__()
        self.n_users, self.n_items = history.shape
        self.layers, self.l2, self.l2_norm = layers, l2, l2_norm
        self.adjacency = GraphOperator(interaction_graph(history), device, symmetric=True)
        self.ego = embedding_tables((self.n_users, self.n_items), dim, generator, init)

    def propagate(self, adjacency: GraphOperator) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) final embeddings: the layer mean over ``adjacency``."""
        final = layer_mean(adjacency, self.ego, self.layers)
        return final[:self.n_users], final[self.n_users:]

    def ego_penalty(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``l2`` times the L2 term of the batch's ego embeddings (not computed at ``l2`` = 0, FREEDOM's default)."""
        if self.l2 == 0:
            return torch.zeros((), device=self.ego.device)
        return self.l2 * l2_penalty(self.ego, users, self.n_users + positives, self.n_users + negatives,
                                    norm=self.l2_norm)

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.propagate(self.adjacency)
        return bpr_rows_loss(user_final, item_final, users, positives, negatives) + self.ego_penalty(
            users, positives, negatives)

    def forget_items(self, items: torch.Tensor) -> None:
        self.ego[self.n_users + items] = 0.0

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.adjacency)


class LightGCN(BPRRecommender):
    """LightGCN on the fitted history. ``layers``: propagation depth K (the paper's default 3); the other
    parameters are :class:`~vlm4rec.multimodal.bpr.BPRRecommender`'s."""

    name = "lightgcn"
    Config = LightGCNConfig

    def build(self, history: sp.csr_matrix, generator: torch.Generator, device: torch.device) -> LightGCNModel:
        return LightGCNModel(history, self.dim, self.layers, self.l2, generator, device, self.init,
                             self.l2_norm).to(device)
