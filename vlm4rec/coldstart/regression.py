"""Content-to-embedding regression (van den Oord, Dieleman, Schrauwen: "Deep content-based music
recommendation", NeurIPS 2013), the field's cheapest cold-start reference.

A network f maps an item's content c_i to the backbone's item vector v_i, trained on the warm items by the
mean squared error (the paper's MSE objective on the latent factors of a collaborative model):

    L = mean over a batch of warm items i of ||f(c_i) - v_i||^2 / dim

(a warm item without content has nothing to regress from and is left out of training).

Scoring: score(u, i) = u_u . v_i for a warm item (the backbone, unchanged) and u_u . f(c_i) for a new item,
u being the backbone's user vector: the warm ranking is the backbone's.

Reference code: ColdRec's ``model/DeepMusic.py`` (YuanchenBei/ColdRec; f = Linear(d, 2 dim) -> ReLU ->
Linear(2 dim, dim), warm items kept, new items generated), which this follows. Deviations: the paper
regresses audio through a convolutional network; the study's content is a precomputed embedding, so f is
an MLP (``hidden`` = () gives a linear map). ColdRec draws its training items from the positive pairs (an
item as often as it has positives) and adds an L2 term on f's output; this visits every warm item once per
epoch, as the paper's objective weighs every song alike, and has no L2 term (validation stops it early).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from pydantic import Field
from torch import nn

from vlm4rec.coldstart.base import (Activation, DistilledRecommender, TrainedConfig, WarmData, item_batches,
                                    mlp)


class ContentRegressionConfig(TrainedConfig):
    """``hidden``: widths of f's hidden layers (the reference's one layer of twice the backbone's size
    when None; () = a linear map); ``activation`` of the hidden layers."""

    hidden: tuple[int, ...] | None = None
    activation: Activation = "relu"
    batch_size: int = Field(default=256, ge=2)


class RegressionModule(nn.Module):
    """f over the content, with the backbone's item vectors as its targets."""

    def __init__(self, data: WarmData, config: ContentRegressionConfig, generator: torch.Generator):
        super().__init__()
        dim = data.items.shape[1]
        hidden = config.hidden if config.hidden is not None else (2 * dim,)
        self.f = mlp(data.content.shape[1], hidden, dim, generator, config.activation, batch_norm=False)
        self.register_buffer("content", torch.as_tensor(data.content), persistent=False)
        self.register_buffer("targets", torch.as_tensor(data.items), persistent=False)
        self.register_buffer("warm", torch.as_tensor(data.warm), persistent=False)
        self.register_buffer("users", torch.as_tensor(data.users), persistent=False)

    def loss(self, items: torch.Tensor) -> torch.Tensor:
        return (self.f(self.content[items]) - self.targets[items]).pow(2).mean()

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's user vectors; the backbone's vectors for the warm items, f(content) for the new ones."""
        return self.users, torch.where(self.warm[:, None], self.targets, self.f(self.content))


class ContentRegression(DistilledRecommender):
    """DeepMusic-style regression from ``content`` (``(n_items, d)``) to the ``backbone``'s item vectors
    (default: :func:`~vlm4rec.coldstart.base.default_backbone`), see the module docstring."""

    name = "content_regression"
    config_type = ContentRegressionConfig
    config: ContentRegressionConfig
    module_type = RegressionModule

    def batches(self, data: WarmData, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        return item_batches(data.warm_items[data.has_content[data.warm_items]], rng, self.config.batch_size)
