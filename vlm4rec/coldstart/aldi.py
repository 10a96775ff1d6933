"""ALDI (Huang, Wang, Zhang, Yi, Zhu, Ou, Wang: "Aligning Distillation for Cold-start Item Recommendation",
SIGIR 2023): a content student distilled from the warm backbone teacher.

Student: an item mapper f_I over the content and a user mapper f_U over the teacher's user vector; the
teacher is the backbone (u_u, v_i). On a batch of warm triples (u, i+, j-), with student scores
s_i = f_U(u_u) . f_I(c_i), teacher scores t_i = u_u . v_i, w_i the teacher's weight of item i:

    supervised         L_B = mean softplus(-(s_i+ - s_j-))                       (BPR on the student)
    rating distr.      L_R = mean (|t_i+ - s_i+| + |t_j- - s_j-|)
    ranking            L_K = mean w_i+ BCE(logit s_i+ - s_j-, target sigmoid(t_i+ - t_j-))
    identification     L_I = mean w_i+ BCE(logit d^s_i+, target sigmoid(d^t_i+)),
                       d_i = e_i . e_i - mean over the batch's negatives j of e_i . e_j (e = f_I(c) or v)
    L = L_B + gamma L_R + alpha L_K + beta L_I + l2 / 2 * ||mapper weights and biases||^2

Teacher weights (``frequency_weighting``, the paper's adaptive weighting of the teacher by item popularity):
w_i = min(tanh(a freq_i), tanh(M)), freq_i = sum over i's users of 1 / (that user's history size), a = M /
(n_users / n_items) (the expected freq); off (w = 1) by default, as in the authors' ``main.py``.

Scoring (the authors' ``get_user_rating``): a warm item by the teacher, u_u . v_i; a new item by the student,
f_U(u_u) . f_I(c_i); one factor product with user vectors [u_u, f_U(u_u)] and item vectors [v_i, 0] (warm) or
[0, f_I(c_i)] (new).

Reference code: the authors' ``zfnWong/ALDI`` (``cold_start/ALDI.py``, ``main.py``: mappers of one hidden
layer with batch normalisation and tanh and a linear output, the four terms and their defaults alpha 0.9,
beta 0.05, gamma 0.1, l2 1e-4, M 4; Adam lr 1e-3, batch 1024) and ColdRec's ``model/ALDI.py``, which this
follows. Deviations: layers start Xavier-uniform with zero bias (the authors: truncated normal, std 0.01);
the hidden width defaults to the backbone's size (the authors: 200 with a 200-d BPR-MF teacher, so the same
rule); the teacher is LightGCN rather than BPR-MF; negatives are drawn per positive from the warm items
outside the user's history, and every positive is visited once per epoch (the authors draw one negative
per positive per epoch too, but drop the last partial batch).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vlm4rec.coldstart.base import DistilledRecommender, TrainedConfig, WarmData, mlp


class ALDIConfig(TrainedConfig):
    """``alpha``, ``beta``, ``gamma``: weights of the ranking, identification and rating-distribution terms;
    ``l2``: weight of the mappers' L2 term; ``hidden``: the mappers' hidden widths (None = one layer of the
    backbone's size); ``frequency_weighting`` and ``freq_coef_M``: the teacher weights (module docstring)."""

    alpha: float = Field(default=0.9, ge=0)
    beta: float = Field(default=0.05, ge=0)
    gamma: float = Field(default=0.1, ge=0)
    l2: float = Field(default=1e-4, ge=0)
    hidden: tuple[int, ...] | None = None
    frequency_weighting: bool = False
    freq_coef_M: float = Field(default=4.0, gt=0)


def teacher_weights(matrix: sp.csr_matrix, frequency_weighting: bool, freq_coef_M: float) -> np.ndarray:
    """w_i per item (float32): min(tanh(a freq_i), tanh(M)) with the module docstring's freq and a, or ones."""
    n_users, n_items = matrix.shape
    if not frequency_weighting:
        return np.ones(n_items, dtype=np.float32)
    sizes = np.asarray(matrix.sum(axis=1)).ravel()
    inverse = np.divide(1.0, sizes, out=np.zeros_like(sizes, dtype=np.float64), where=sizes > 0)
    freq = np.asarray(matrix.T @ inverse).ravel()
    a = freq_coef_M / (n_users / n_items)
    return np.minimum(np.tanh(a * freq), np.tanh(freq_coef_M)).astype(np.float32)


def soft_bce(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-row binary cross-entropy of ``logits`` against the soft targets sigmoid(``teacher_logits``)."""
    return F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher_logits), reduction="none")


def identification_gap(positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """d_i = e_i . e_i - mean_j e_i . e_j for every row i of ``positives`` against all rows of ``negatives``."""
    return (positives * positives).sum(dim=1) - (positives @ negatives.T).mean(dim=1)


class ALDIModule(nn.Module):
    """The student's two mappers, the teacher's vectors, the content and the teacher weights."""

    def __init__(self, data: WarmData, config: ALDIConfig, generator: torch.Generator):
        super().__init__()
        dim = data.items.shape[1]
        hidden = config.hidden if config.hidden is not None else (dim,)
        self.config = config
        self.item_mapper = mlp(data.content.shape[1], hidden, dim, generator, "tanh", batch_norm=True)
        self.user_mapper = mlp(dim, hidden, dim, generator, "tanh", batch_norm=True)
        weights = teacher_weights(data.matrix, config.frequency_weighting, config.freq_coef_M)
        for name, value in (("users", data.users), ("items", data.items), ("content", data.content),
                            ("warm", data.warm), ("weights", weights)):
            self.register_buffer(name, torch.as_tensor(value), persistent=False)

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        c = self.config
        teacher_user, teacher_pos, teacher_neg = self.users[users], self.items[positives], self.items[negatives]
        student_user = self.user_mapper(teacher_user)
        student_items = self.item_mapper(self.content[torch.cat([positives, negatives])])
        student_pos, student_neg = student_items[:len(positives)], student_items[len(positives):]
        s_pos, s_neg = (student_user * student_pos).sum(dim=1), (student_user * student_neg).sum(dim=1)
        t_pos, t_neg = (teacher_user * teacher_pos).sum(dim=1), (teacher_user * teacher_neg).sum(dim=1)
        w = self.weights[positives]
        supervised = F.softplus(-(s_pos - s_neg)).mean()
        rating = ((t_pos - s_pos).abs() + (t_neg - s_neg).abs()).mean()
        ranking = (w * soft_bce(s_pos - s_neg, t_pos - t_neg)).mean()
        identification = (w * soft_bce(identification_gap(student_pos, student_neg),
                                       identification_gap(teacher_pos, teacher_neg))).mean()
        return (supervised + c.gamma * rating + c.alpha * ranking + c.beta * identification
                + c.l2 * 0.5 * self.mapper_norm())

    def mapper_norm(self) -> torch.Tensor:
        """Squared norm of the mappers' linear weights and biases (batch normalisation excluded)."""
        layers = [m for m in [*self.item_mapper, *self.user_mapper] if isinstance(m, nn.Linear)]
        return sum(p.pow(2).sum() for layer in layers for p in layer.parameters())

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        users = torch.cat([self.users, self.user_mapper(self.users)], dim=1)
        warm = self.warm[:, None]
        teacher = torch.where(warm, self.items, 0.0)
        student = torch.where(warm, 0.0, self.item_mapper(self.content))
        return users, torch.cat([teacher, student], dim=1)


class ALDI(DistilledRecommender):
    """ALDI over ``content`` (``(n_items, d)``) and the ``backbone`` teacher (default:
    :func:`~vlm4rec.coldstart.base.default_backbone`), see the module docstring."""

    name = "aldi"
    config_type = ALDIConfig
    config: ALDIConfig
    module_type = ALDIModule
