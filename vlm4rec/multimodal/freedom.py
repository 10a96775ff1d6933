"""FREEDOM (Zhou & Shen: "A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
Recommendation", ACM MM 2023).

- Item-item graphs, one per modality, from the content features alone: each item's ``knn_k`` most cosine-
  similar items, binary, normalised D^-1/2 S D^-1/2. Built once and frozen (the "freezing").
  They are combined with learned modality weights (a softmax over one logit per modality, initially
  uniform): one layer is h <- sum_m alpha_m S_m h, applied ``item_layers`` times to the items' ID
  embeddings.
- The user-item graph is LightGCN's, with degree-sensitive edge pruning (the "denoising", section
  3.2.2): each epoch keeps a share ``1 - edge_drop`` of the training edges, sampled with probability
  proportional to 1 / sqrt(d_u d_i), and is renormalised; scoring uses the full graph.
- Final user = LightGCN user; final item = LightGCN item + h.
- Loss: BPR on the final embeddings + ``projection_weight`` * sum_m BPR(user, W_m f_i + b_m) with the
  projected modality features as item representations (items without the modality
  contribute a zero vector) + ``l2`` * the ego-embedding L2 term of LightGCN (0 reproduces the paper's loss).

Deliberate simplifications: the features are fixed L2-normalised inputs (the reference code fine-tunes
the raw feature tables); an item is not its own kNN neighbour (the reference top-k includes the item
itself, whose own ID embedding already enters through the user-item branch); the reference code fixes
the modality weights (image 0.1) where this learns them, as the issue specifies.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from vlm4rec.multimodal.graphs import GraphOperator, degree_sensitive_dropout, interaction_graph, knn_graph
from vlm4rec.multimodal.lightgcn import LightGCN, LightGCNModel
from vlm4rec.multimodal.training import ContentFeatures, bpr_loss, linear, rows


class FreedomModel(LightGCNModel):
    """LightGCN branch on a pruned graph plus convolution over frozen, weighted item-item graphs."""

    def __init__(self, history: sp.csr_matrix, features: ContentFeatures, dim: int, layers: int,
                 item_layers: int, knn_k: int, edge_drop: float, projection_weight: float, l2: float,
                 generator: torch.Generator, device: torch.device):
        super().__init__(history, dim, layers, l2, generator, device)
        self.history, self.graph_device = history, device
        self.item_layers, self.edge_drop, self.projection_weight = item_layers, edge_drop, projection_weight
        self.features = features
        self.item_graphs = [GraphOperator(knn_graph(x.numpy(), knn_k, weighted=False), device)
                            for x in features.matrices()]
        self.modality_logits = nn.Parameter(torch.zeros(len(features)))
        self.projections = nn.ModuleList(linear(x.shape[1], dim, generator) for x in features.matrices())
        self.train_adjacency = self.adjacency

    def start_epoch(self, rng: np.random.Generator) -> None:
        if self.edge_drop > 0:
            kept = degree_sensitive_dropout(self.history, self.edge_drop, rng)
            self.train_adjacency = GraphOperator(interaction_graph(kept), self.graph_device, symmetric=True)

    def item_graph_embeddings(self) -> torch.Tensor:
        """h = (sum_m alpha_m S_m)^item_layers applied to the items' ID (ego) embeddings."""
        weights = torch.softmax(self.modality_logits, dim=0)
        h = self.ego[self.n_users:]
        for _ in range(self.item_layers):
            h = sum(w * (graph @ h) for w, graph in zip(weights, self.item_graphs))
        return h

    def final(self, adjacency: GraphOperator) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.propagate(adjacency)
        return users, items + self.item_graph_embeddings()

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.final(self.train_adjacency)
        batch_users = rows(user_final, users)
        loss = bpr_loss(batch_users, rows(item_final, positives), rows(item_final, negatives))
        if self.projection_weight > 0:
            projected = self.features.projected(self.projections)
            loss = loss + self.projection_weight * sum(bpr_loss(batch_users, rows(p, positives), rows(p, negatives))
                                                       for p in projected)
        return loss + self.ego_penalty(users, positives, negatives)

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.final(self.adjacency)


class FREEDOM(LightGCN):
    """FREEDOM with one or more modalities ``{name: (n_items, d) float32}`` (the paper: text and image).

    ``layers``             user-item LightGCN layers (paper: 2)
    ``item_layers``        item-item graph convolutions (paper: 1)
    ``knn_k``              neighbours per item in each modality graph (paper: 10)
    ``edge_drop``          share of user-item edges pruned per epoch (reference grid: 0.8, 0.9)
    ``projection_weight``  weight of the modality projection BPR losses (reference grid: 0, 1e-5, 1e-4, 1e-3)
    Training parameters: :class:`~vlm4rec.multimodal.training.BPRRecommender` (``l2``: LightGCN's ego term).
    """

    name = "freedom"

    def __init__(self, modalities: Mapping[str, np.ndarray], layers: int = 2, item_layers: int = 1,
                 knn_k: int = 10, edge_drop: float = 0.8, projection_weight: float = 1e-3, **training):
        super().__init__(layers=layers, **training)
        if not modalities:
            raise ValueError("FREEDOM needs at least one modality")
        if item_layers < 1 or knn_k < 1 or not 0 <= edge_drop < 1 or projection_weight < 0:
            raise ValueError(f"need item_layers >= 1, knn_k >= 1, 0 <= edge_drop < 1, projection_weight >= 0; "
                             f"got {item_layers}, {knn_k}, {edge_drop}, {projection_weight}")
        self.modalities = dict(modalities)
        self.item_layers, self.knn_k, self.edge_drop, self.projection_weight = (
            item_layers, knn_k, edge_drop, projection_weight)

    def build(self, history: sp.csr_matrix, generator: torch.Generator, device: torch.device) -> FreedomModel:
        features = ContentFeatures(self.modalities, history.shape[1])
        return FreedomModel(history, features, self.dim, self.layers, self.item_layers, self.knn_k, self.edge_drop,
                            self.projection_weight, self.l2, generator, device).to(device)
