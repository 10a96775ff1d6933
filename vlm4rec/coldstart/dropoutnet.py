"""DropoutNet (Volkovs, Yu, Poutanen: "DropoutNet: Addressing Cold Start in Recommender Systems", NeurIPS 2017).

Two towers re-learn the backbone's scores from [preference, content] inputs:

    user tower  f_U(u_u)           (no user content in this study)
    item tower  f_V([v_i, c_i])    v_i the backbone's item vector, c_i the item's content
    s(u, i) = f_U(u_u) . f_V([v_i, c_i]),   L = mean over the batch's pairs of (u_u . v_i - s(u, i))^2

Input dropout: during training each pair's item preference input v_i is zeroed with probability
``dropout`` (the paper's item dropout), so that the item tower learns to place an item from its content
alone; a new item's preference input is always zero, at training and at scoring. Pairs: every positive
(u, i) of the warm history once per epoch, in a seeded order, each with one negative j drawn from the warm
items outside u's history; both pairs are regressed (the paper regresses the preference scores of positive
and sampled items alike).

Scoring: every item through the towers (warm items with v_i, new items with 0), users through f_U.

Reference code: the authors' ``layer6ai-labs/DropoutNet`` (TensorFlow: towers of dense layers with batch
normalisation and tanh, ``model_select`` hidden widths, a linear output layer, item dropout at rate 0.5) and
ColdRec's ``model/DropoutNet.py`` (its PyTorch port, widths [200, 100], positive and negative pairs), which
this follows. Deviations: layers start Xavier-uniform with zero bias (the authors: truncated normal,
std 0.01); the preference inputs are the backbone's vectors as they are (the authors standardise them) and
the content is L2-normalised per item; the dropout draws one Bernoulli per pair (ColdRec zeroes a fixed
share of the batch); the paper's user dropout and "transform" inputs are left out (no new users here).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from pydantic import Field
from torch import nn

from vlm4rec.coldstart.base import DistilledRecommender, TrainedConfig, WarmData, mlp


class DropoutNetConfig(TrainedConfig):
    """``hidden``: widths of each tower's hidden layers; ``out_dim``: the towers' output size (None = the
    backbone's); ``dropout``: probability that a pair's item preference input is zeroed in training."""

    hidden: tuple[int, ...] = (200, 100)
    out_dim: int | None = Field(default=None, ge=1)
    dropout: float = Field(default=0.5, ge=0, le=1)


class DropoutNetModule(nn.Module):
    """The two towers, the backbone's vectors (targets and preference inputs) and the content."""

    def __init__(self, data: WarmData, config: DropoutNetConfig, generator: torch.Generator):
        super().__init__()
        dim = data.items.shape[1]
        out_dim = config.out_dim or dim
        self.dropout = config.dropout
        self.user_tower = mlp(dim, config.hidden, out_dim, generator, "tanh", batch_norm=True)
        self.item_tower = mlp(dim + data.content.shape[1], config.hidden, out_dim, generator, "tanh", batch_norm=True)
        preference = np.where(data.warm[:, None], data.items, 0.0).astype(np.float32)
        self.register_buffer("users", torch.as_tensor(data.users), persistent=False)
        self.register_buffer("preference", torch.as_tensor(preference), persistent=False)
        self.register_buffer("content", torch.as_tensor(data.content), persistent=False)

    def item_inputs(self, items: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """[v_i, c_i] of ``items``; v_i zeroed where ``keep`` is False."""
        preference = self.preference[items] if keep is None else self.preference[items] * keep[:, None]
        return torch.cat([preference, self.content[items]], dim=1)

    def loss(self, users: torch.Tensor, items: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """MSE between the backbone's scores and the towers' on the pairs (users, items)."""
        target = (self.users[users] * self.preference[items]).sum(dim=1)
        predicted = (self.user_tower(self.users[users]) * self.item_tower(self.item_inputs(items, keep))).sum(dim=1)
        return (target - predicted).pow(2).mean()

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_tower(self.users), self.item_tower(self.item_inputs(torch.arange(len(self.content))))


class DropoutNet(DistilledRecommender):
    """DropoutNet over ``content`` (``(n_items, d)``) and the ``backbone``'s vectors (default:
    :func:`~vlm4rec.coldstart.base.default_backbone`), see the module docstring."""

    name = "dropoutnet"
    config_type = DropoutNetConfig
    config: DropoutNetConfig
    module_type = DropoutNetModule

    def batches(self, data: WarmData, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        for users, positives, negatives in super().batches(data, rng):
            yield np.concatenate([users, users]), np.concatenate([positives, negatives])

    def batch_loss(self, batch: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        users, items = batch
        keep = (torch.rand(len(items), generator=generator) >= self.config.dropout).to(items.device)
        return self.module.loss(users, items, keep.float())
