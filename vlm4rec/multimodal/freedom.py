"""FREEDOM (Zhou & Shen: "A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
Recommendation", ACM MM 2023). Follows the authors' code in MMRec (``src/models/freedom.py``,
``src/configs/model/FREEDOM.yaml``; the same as enoche/FREEDOM).

- Item-item graphs, one per modality, from the content features alone: each item's ``knn_k`` most cosine-
  similar items, the item itself among them (the reference's top-k), binary, normalised D^-1/2 S D^-1/2.
  Built once and frozen (the "freezing"). They are mixed with the reference's fixed weights
  (``modality_mix="fixed"``): the image graph weighs ``image_weight`` (reference ``mm_image_weight`` 0.1),
  the text graph 1 - ``image_weight``; with one modality its graph weighs 1 (the reference code runs with
  an image or a text table alone, so one-modality cells are FREEDOM too). A modality plays the image role
  when its name is ``image_modality`` (the study's ``image`` representation), every other the text role;
  several modalities of one role share its weight equally. The named variant ``modality_mix="learned"``
  learns the weights instead (a softmax over one logit per modality, initially uniform). One layer is
  h <- S h with S the mixed graph, applied ``item_layers`` times to the items' ID embeddings.
- The user-item graph is LightGCN's, with degree-sensitive edge pruning (the "denoising", section
  3.2.2): each epoch keeps a share ``1 - edge_drop`` of the training edges, sampled without replacement
  with probability proportional to 1 / sqrt(d_u d_i), and is renormalised; scoring uses the full graph.
- Final user = LightGCN user; final item = LightGCN item + h.
- New items (``unseen_items="content"``): ``content_graph="transductive"`` (the reference's form) builds the
  item-item graphs from every item's features; ``"inductive"`` trains over the warm items' graph alone and
  inserts each new item at scoring by its nearest warm items (:func:`~vlm4rec.multimodal.graphs.knn_graph`).
- Loss: BPR on the final embeddings + ``projection_weight`` * sum_m BPR(user, W_m f_i + b_m) with the
  projected modality features as item representations (the reference's ``reg_weight``, grid 0, 1e-5, 1e-4,
  1e-3: it weighs these projection losses, there is no embedding L2 in the reference) + ``l2`` * the
  ego-embedding L2 term of LightGCN, 0 by default (the reference loss).
- Initialisation with ``init="reference"``: Xavier-uniform user and item tables, torch's default for the
  projections (``nn.Linear``).

Deviations from the reference code: the features are L2-normalised rows (the reference projects the raw
tables; it builds its graph from cosines, which normalisation does not change), fixed inputs unless
``finetune_features`` (the reference fine-tunes them: ``from_pretrained(freeze=False)``; they reach only
the projection losses); an item without the modality (all-zero row) has no edges and a zero projection;
the edge pruning keeps each user's best-keyed edge so that no user is cut off for an epoch (the reference's
``torch.multinomial`` may drop all of a user's edges) and keeps ``round((1 - edge_drop) * nnz)`` edges where
the reference keeps ``int(...)``: since ``1 - 0.8`` is slightly below 0.2 in floating point, ours keeps one
edge more for many edge counts (150 edges: 30 against 29).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from vlm4rec.methods import FREEDOMConfig, L2Norm
from vlm4rec.multimodal.graphs import (GraphOperator, degree_sensitive_dropout, interaction_graph, knn_graph,
                                       warm_items, warm_rows, weighted_sum)
from vlm4rec.multimodal.lightgcn import LightGCN, LightGCNModel
from vlm4rec.layers import linear
from vlm4rec.multimodal.bpr import ContentFeatures, Init, bpr_rows_loss

def role_weights(names: Sequence[str], image_modality: str, image_weight: float) -> list[float]:
    """FREEDOM's fixed modality weights: ``image_weight`` shared by the modalities named ``image_modality``,
    1 - ``image_weight`` by the others (text); a role without modalities passes its weight to the other."""
    is_image = [name == image_modality for name in names]
    n_image, n_text = sum(is_image), len(names) - sum(is_image)
    if n_image == 0 or n_text == 0:
        return [1.0 / len(names)] * len(names)
    return [image_weight / n_image if image else (1.0 - image_weight) / n_text for image in is_image]


class FreedomModel(LightGCNModel):
    """LightGCN branch on a pruned graph plus convolution over frozen, weighted item-item graphs."""

    def __init__(self, history: sp.csr_matrix, features: ContentFeatures, dim: int, layers: int,
                 item_layers: int, knn_k: int, edge_drop: float, projection_weight: float, l2: float,
                 mix_weights: list[float] | None, generator: torch.Generator, device: torch.device, init: Init,
                 l2_norm: L2Norm = "squared", warm: np.ndarray | None = None):
        super().__init__(history, dim, layers, l2, generator, device, init, l2_norm)
        self.history, self.graph_device = history, device
        self.item_layers, self.edge_drop, self.projection_weight = item_layers, edge_drop, projection_weight
        self.features, self.mix_weights = features, mix_weights
        self.modality_logits = nn.Parameter(torch.zeros(len(features))) if mix_weights is None else None
        graphs = [knn_graph(x, knn_k, weighted=False, self_loops=True, warm=warm) for x in features.initial()]
        self.scoring_item_graphs = self.mixed(graphs)
        self.item_graphs = self.scoring_item_graphs if warm is None else self.mixed(
            [warm_rows(g, warm) for g in graphs])
        linear_init = "torch" if init == "reference" else "xavier_uniform"
        self.projections = nn.ModuleList(linear(x.shape[1], dim, generator, init=linear_init)
                                         for x in features.matrices())
        self.train_adjacency = self.adjacency

    def start_epoch(self, rng: np.random.Generator) -> None:
        if self.edge_drop > 0:
            kept = degree_sensitive_dropout(self.history, self.edge_drop, rng)
            self.train_adjacency = GraphOperator(interaction_graph(kept), self.graph_device, symmetric=True)

    def mixed(self, graphs: list[sp.csr_matrix]) -> list[GraphOperator]:
        """The modality graphs as operators: one per modality (learned mix) or their fixed mix."""
        if self.mix_weights is None:
            return [GraphOperator(g, self.graph_device) for g in graphs]
        return [GraphOperator(weighted_sum(graphs, self.mix_weights), self.graph_device)]

    def item_graph_embeddings(self, item_graphs: list[GraphOperator]) -> torch.Tensor:
        """h = (sum_m alpha_m S_m)^item_layers applied to the items' ID (ego) embeddings."""
        h = self.ego[self.n_users:]
        for _ in range(self.item_layers):
            if self.modality_logits is None:
                h = item_graphs[0] @ h
            else:
                weights = torch.softmax(self.modality_logits, dim=0)
                h = sum(w * (graph @ h) for w, graph in zip(weights, item_graphs))
        return h

    def final(self, adjacency: GraphOperator, item_graphs: list[GraphOperator]) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.propagate(adjacency)
        return users, items + self.item_graph_embeddings(item_graphs)

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.final(self.train_adjacency, self.item_graphs)
        loss = bpr_rows_loss(user_final, item_final, users, positives, negatives)
        if self.projection_weight > 0:
            projected = self.features.projected(self.projections)
            loss = loss + self.projection_weight * sum(bpr_rows_loss(user_final, p, users, positives, negatives)
                                                       for p in projected)
        return loss + self.ego_penalty(users, positives, negatives)

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.final(self.adjacency, self.scoring_item_graphs)


class FREEDOM(LightGCN):
    """FREEDOM with one or more modalities ``{name: (n_items, d) float32}`` (the paper: text and image).

    ``layers``             user-item LightGCN layers (reference: 2)
    ``item_layers``        item-item graph convolutions (reference: 1)
    ``knn_k``              neighbours per item in each modality graph, the item itself included (reference: 10)
    ``edge_drop``          share of user-item edges pruned per epoch (reference grid: 0.8, 0.9)
    ``projection_weight``  weight of the modality projection BPR losses (the reference's ``reg_weight``;
                           grid 0, 1e-5, 1e-4, 1e-3; the default scale's grid takes 0: on ML-1M the same
                           validation curve at 1e-3, and an epoch without them costs 2.6x less)
    ``modality_mix``       ``fixed`` (the reference) | ``learned`` (a variant: softmax-weighted graphs)
    ``image_weight``       the image graph's weight in the fixed mix (reference ``mm_image_weight``: 0.1)
    ``image_modality``     the modality name that plays the image role (others: text)
    ``finetune_features``  train the normalised feature tables too (the reference does)
    Training parameters: :class:`~vlm4rec.multimodal.bpr.BPRRecommender` (``l2``: LightGCN's ego term,
    0 by default as in the reference).
    """

    name = "freedom"
    Config = FREEDOMConfig

    def __init__(self, modalities: Mapping[str, np.ndarray], **settings: Any):
        super().__init__(**settings)
        if not modalities:
            raise ValueError("FREEDOM needs at least one modality")
        self.modalities = dict(modalities)

    def build(self, history: sp.csr_matrix, generator: torch.Generator, device: torch.device) -> FreedomModel:
        features = ContentFeatures(self.modalities, history.shape[1], trainable=self.finetune_features)
        mix = (role_weights(features.names, self.image_modality, self.image_weight)
               if self.modality_mix == "fixed" else None)
        return FreedomModel(history, features, self.dim, self.layers, self.item_layers, self.knn_k, self.edge_drop,
                            self.projection_weight, self.l2, mix, generator, device, self.init,
                            self.l2_norm, warm_items(history, self.content_graph)).to(device)
