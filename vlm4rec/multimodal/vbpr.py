"""VBPR (He & McAuley: "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback", AAAI 2016).

score(u, i) = beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i, the paper's predictor without
the global and user biases (they do not change a user's ranking). gamma are latent ID factors, E projects
the item's content feature f_i to the space of the users' content factors theta_u, beta' is the content
bias. Half of the embedding size goes to gamma, half to theta.

Any representation can serve as the "visual" feature. With several modalities f_i is the concatenation
of the L2-normalised modality vectors (a missing modality contributes a zero block): one projection of
the concatenation equals the sum of one projection per modality (E [f; g] = E_f f + E_g g), so this is
the per-modality variant without extra code, and normalising first keeps a 1280-d image vector from
outweighing a 384-d text vector by scale alone.

Loss (``penalty="batch"``, the default): BPR plus ``l2`` * 0.5 * (||u||^2 + ||p||^2 + ||n||^2) / batch, with
u = [gamma_u, theta_u] the batch's user vectors and p, n = [gamma_i, E f_i, beta_i + beta' . f_i] its positive
and negative item vectors: the L2 term falls on what the batch scores with, so E and beta' are penalised
through the content they project (a separate, unpenalised E overfitted within 5 epochs here).
``penalty="paper"`` penalises the parameters themselves, as the paper: per triple, ``l2`` (lambda_Theta) *
0.5 * (||gamma_u||^2 + ||theta_u||^2 + ||gamma_i||^2 + beta_i^2 + ||gamma_j||^2 + beta_j^2), averaged over
the batch, plus ``l2_content`` (lambda_E) * 0.5 * (||E||^2 + ||beta'||^2) once per step (per triple, as
the paper's per-sample SGD step applies it). MMRec's VBPR (``src/models/vbpr.py``) penalises the same three
batch blocks as the default but with ``EmbLoss``, the sum of their Frobenius norms, not squared and not
halved, divided by the batch size; so an ``l2`` value here is not MMRec's ``reg_weight`` value (its grid:
2, 1, 0.1, ..., 1e-5) unless ``l2_norm="frobenius"``, which applies ``EmbLoss`` itself (the full scale's grid,
on its own scale; the bias column stays in the item block).
MMRec's VBPR also has no biases and gives the user 2 x 64 dimensions (64 ID + 64 content): ``split="each"``
gives gamma and theta ``dim`` each as MMRec; the default ``split="half"`` splits ``dim`` in half (the same
64-number user vector as every other model of the study), plus the bias column in both.

``init="reference"`` (the paper regime) starts from MMRec's initialisation: Xavier-uniform user and item
tables, a Xavier-normal projection E; biases start at zero in both regimes.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from vlm4rec.methods import VBPRConfig
from vlm4rec.layers import linear, rows
from vlm4rec.multimodal.bpr import BPRModel, BPRRecommender, ContentFeatures, bpr_loss, embedding_tables, l2_penalty


class VBPRModel(BPRModel):
    """User vector [gamma_u, theta_u, 1], item vector [gamma_i, E f_i, beta_i + beta' . f_i]."""

    def __init__(self, n_users: int, features: ContentFeatures, config: VBPRConfig, generator: torch.Generator):
        super().__init__()
        self.l2, self.penalty, self.l2_content = config.l2, config.penalty, config.l2_content
        self.l2_norm = config.l2_norm
        content = torch.cat(features.matrices(), dim=1)
        self.register_buffer("content", content, persistent=False)
        n_items = content.shape[0]
        id_dim, content_dim = (config.dim // 2, config.dim - config.dim // 2) if config.split == "half" else \
            (config.dim, config.dim)
        self.user_factors = embedding_tables((n_users,), id_dim + content_dim, generator, config.init)  # gamma, theta
        self.item_factors = embedding_tables((n_items,), id_dim, generator, config.init)     # gamma_i
        self.item_bias = nn.Parameter(torch.zeros(n_items, 1))                                # beta_i
        self.projection = linear(content.shape[1], content_dim, generator, bias=False,        # E
                                 init="xavier_normal" if config.init == "reference" else "xavier_uniform")
        self.content_bias = nn.Parameter(torch.zeros(content.shape[1], 1))    # beta'

    def item_vectors(self) -> torch.Tensor:
        bias = self.item_bias + self.content @ self.content_bias
        return torch.cat([self.item_factors, self.projection(self.content), bias], dim=1)

    def user_vectors(self, users: torch.Tensor | None = None) -> torch.Tensor:
        factors = self.user_factors if users is None else rows(self.user_factors, users)
        return torch.cat([factors, factors.new_ones(len(factors), 1)], dim=1)

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        items = self.item_vectors()
        ranking_loss = bpr_loss(self.user_vectors(users), rows(items, positives), rows(items, negatives))
        users_penalty = l2_penalty(self.user_factors, users, norm=self.l2_norm)  # gamma_u, theta_u
        if self.penalty == "batch":
            return ranking_loss + self.l2 * (users_penalty + l2_penalty(items, positives, negatives,
                                                                        norm=self.l2_norm))
        ids = users_penalty + sum(l2_penalty(table, positives, negatives)  # gamma_i, beta_i
                                  for table in (self.item_factors, self.item_bias))
        content = 0.5 * (self.projection.weight.pow(2).sum() + self.content_bias.pow(2).sum())
        return ranking_loss + self.l2 * ids + self.l2_content * content

    def forget_items(self, items: torch.Tensor) -> None:
        """A new item keeps its content term theta_u . E f_i and content bias beta' . f_i only."""
        self.item_factors[items] = 0.0
        self.item_bias[items] = 0.0

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_vectors(), self.item_vectors()


class VBPR(BPRRecommender):
    """VBPR with one or more content modalities ``{name: (n_items, d) float32}`` (rows aligned to item
    index, all-zero row = missing). Training parameters: :class:`~vlm4rec.multimodal.bpr.BPRRecommender`,
    with VBPR's own defaults lr = 0.01 and l2 = 1e-2 (a matrix factorisation has no graph smoothing: at
    the graph models' lr = 0.05 and l2 = 1e-4 it overfits within a few epochs on ML-1M)."""

    name = "vbpr"
    Config = VBPRConfig

    def __init__(self, modalities: Mapping[str, np.ndarray], **settings: Any):
        super().__init__(**settings)
        if not modalities:
            raise ValueError("VBPR needs at least one modality")
        self.modalities = dict(modalities)

    def build(self, history: sp.csr_matrix, generator: torch.Generator, device: torch.device) -> VBPRModel:
        features = ContentFeatures(self.modalities, history.shape[1])
        return VBPRModel(history.shape[0], features, self.config, generator).to(device)
