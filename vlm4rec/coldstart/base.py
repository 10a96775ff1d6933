"""What the dedicated cold-start recommenders share: their content input, their collaborative backbone, the
split of the catalogue into warm and new items, and one trainer for the models that learn a content mapping.

Content: one ``(n_items, d)`` float matrix, rows aligned to item index, an all-zero row = the item has none.
Rows are L2-normalised (as :class:`~vlm4rec.multimodal.bpr.ContentFeatures` does), so that every
representation of the study (text arms, image, a concatenation of two) enters on the same scale.

Warm and new items: an item is *warm* when it has a positive in the fitted history, *new* otherwise. A new
item's collaborative vector comes from its content alone; a new item without content cannot be scored
(``-inf``, counted in :meth:`ColdStartRecommender.diagnostics`).

Backbone: the collaborative space is the user and item vectors of a :class:`~vlm4rec.matching.FactorRecommender`
fitted on the same warm history: LightGCN (:func:`default_backbone`, content-free, new items without ID
parameters and never drawn as negatives). A model fits its backbone at its own fit; to share one backbone fit
among many candidates (every content representation and grid point), pass it wrapped in
:class:`~vlm4rec.cold_start.FittedOnce`, which refits only for another history object.

Trainer (:class:`DistilledRecommender`): Adam over mini-batches, an epoch at a time through
:func:`~vlm4rec.training.train_epochs`, so validation early-stops it like the BPR models; every random draw
(initial weights, orders, negatives, dropout masks) comes from the fit's own generators
(:class:`~vlm4rec.training.TrainingOptions`), never from global state.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterator, Literal, Mapping, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from vlm4rec.cold_start import FittedOnce
from vlm4rec.layers import linear
from vlm4rec.matching import FactorRecommender, IterativeRecommender, Recommender, stored_coordinates
from vlm4rec.multimodal import LightGCN
from vlm4rec.multimodal.bpr import NegativeSampler, evaluation_factors
from vlm4rec.reproducibility import deterministic_torch
from vlm4rec.splits import History, binarize
from vlm4rec.training import TrainingLog, TrainingOptions
from vlm4rec.vectors import normalize_rows

Activation = Literal["tanh", "relu"]
ConfigModel = TypeVar("ConfigModel", bound=BaseModel)


class ColdStartConfig(BaseModel):
    """Hyperparameters of a cold-start model (a typed configuration beside each class, as LensKit's
    ``ALSConfig`` beside ``ALS``): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainedConfig(ColdStartConfig):
    """The trainer's options, shared by the models that learn a content mapping.

    ``epochs``: epochs of ``fit`` and the most ``fit_monitored`` trains; ``eval_every``, ``patience``: its
    validation checks; ``lr``: Adam's learning rate; ``batch_size``: training examples per Adam step."""

    epochs: int = Field(default=50, ge=0)
    eval_every: int = Field(default=5, ge=1)
    patience: int = Field(default=2, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=1024, ge=2)


def configured(config_type: type[ConfigModel], config: ConfigModel | Mapping[str, Any] | None,
               overrides: Mapping[str, Any]) -> ConfigModel:
    """``config`` (an instance, a mapping or None = the defaults) with ``overrides`` applied, validated."""
    base = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
    return config_type(**{**base, **overrides})


def content_inputs(content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised float32 content, bool per item: has content) after checking the matrix."""
    if np.ndim(content) != 2 or np.shape(content)[1] < 1:
        raise ValueError(f"content must be a 2-d (n_items, d) matrix, got shape {np.shape(content)}")
    content = np.asarray(content, dtype=np.float32)
    if not np.all(np.isfinite(content)):
        raise ValueError("content has non-finite values")
    normalised = normalize_rows(content)
    return normalised, normalised.any(axis=1)


def default_backbone(options: TrainingOptions = TrainingOptions(), **lightgcn: Any) -> LightGCN:
    """The study's content-free LightGCN, fitted like the strict new-item protocol fits the graph models: new
    items get no ID parameters and are never negatives (``unseen_items="content"``)."""
    return LightGCN(**{"unseen_items": "content", "options": options, **lightgcn})


def backbone_factors(backbone: Recommender, history: History) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors, item vectors) of ``backbone`` fitted on ``history``: a FactorRecommender, or one wrapped
    by :class:`~vlm4rec.cold_start.FittedOnce` (its ``model``)."""
    backbone.fit(history)
    factors = backbone.model if isinstance(backbone, FittedOnce) else backbone
    if not isinstance(factors, FactorRecommender) or not factors.fitted:
        raise ValueError(f"backbone {backbone.name!r} has no user and item factors after fit; pass a "
                         "FactorRecommender such as LightGCN")
    return np.asarray(factors.user_factors, dtype=np.float32), np.asarray(factors.item_factors, dtype=np.float32)


@dataclass(frozen=True)
class WarmData:
    """What a cold-start model learns from: the binary warm history, the backbone's vectors (an item's is
    meaningful only when it is warm), the normalised content and which items are warm / have content."""

    matrix: sp.csr_matrix
    users: np.ndarray     # (n_users, dim) backbone user vectors
    items: np.ndarray     # (n_items, dim) backbone item vectors
    content: np.ndarray   # (n_items, d) L2-normalised content
    has_content: np.ndarray
    warm: np.ndarray      # bool per item: a positive in the fitted history

    @property
    def warm_items(self) -> np.ndarray:
        return np.flatnonzero(self.warm)

    @cached_property
    def negatives(self) -> NegativeSampler:
        """Draws negatives among the warm items outside a user's history (built once per fit)."""
        return NegativeSampler(self.matrix, "seen")


class ColdStartRecommender(Recommender):
    """A cold-start model over one content matrix: its fit reads the history through :meth:`warm_data`, which
    marks the new items without content ``missing`` (to be scored ``-inf``)."""

    config_type: type[ColdStartConfig] = ColdStartConfig
    missing: np.ndarray | None = None

    def __init__(self, content: np.ndarray, config: ColdStartConfig | Mapping[str, Any] | None = None,
                 **overrides: Any):
        """``config`` (the model's ``config_type``, a mapping or None = its defaults) with ``overrides``
        applied, validated here, before any fit."""
        self.content, self.has_content = content_inputs(content)
        self.config = configured(self.config_type, config, overrides)

    def warm_data(self, history: History, backbone: Recommender | None) -> WarmData:
        """The fitted history's :class:`WarmData` (``backbone`` None: no collaborative vectors, zero-width)."""
        matrix = binarize(history.matrix)
        if matrix.shape[1] != len(self.content):
            raise ValueError(f"{self.name}: the history has {matrix.shape[1]} items, the content {len(self.content)}")
        if matrix.nnz == 0:
            raise ValueError(f"{self.name}: the history holds no interactions to train on")
        if backbone is None:
            users, items = np.zeros((matrix.shape[0], 0), np.float32), np.zeros((matrix.shape[1], 0), np.float32)
        else:
            users, items = backbone_factors(backbone, history)
        warm = matrix.getnnz(axis=0) > 0
        self.missing = ~warm & ~self.has_content
        return WarmData(matrix, users, items, self.content, self.has_content, warm)

    def diagnostics(self) -> dict[str, float | int]:
        missing = self.missing if self.missing is not None else np.zeros(0, dtype=bool)
        return {"n_unscorable_new_items": int(missing.sum()), "n_items_without_content": int((~self.has_content).sum())}


def mlp(d_in: int, hidden: tuple[int, ...], d_out: int, generator: torch.Generator, activation: Activation,
        batch_norm: bool) -> nn.Sequential:
    """Dense layers ``d_in -> hidden... -> d_out``: each hidden layer Linear (Xavier-uniform, zero bias), then
    BatchNorm when ``batch_norm``, then ``activation``; the output layer is linear (``hidden`` empty: a
    linear map)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(linear(d_in, width, generator))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.Tanh() if activation == "tanh" else nn.ReLU())
        d_in = width
    layers.append(linear(d_in, d_out, generator))
    return nn.Sequential(*layers)


def triple_batches(data: WarmData, rng: np.random.Generator,
                   batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of (users, positives, negatives) batches: every positive of the warm history once in a seeded
    random order, each with one negative drawn among the warm items outside the user's history."""
    users, positives = stored_coordinates(data.matrix)
    negatives = data.negatives(users, rng)
    for batch in batch_slices(rng.permutation(data.matrix.nnz), batch_size):
        yield users[batch], positives[batch], negatives[batch]


def item_batches(items: np.ndarray, rng: np.random.Generator, batch_size: int) -> Iterator[tuple[np.ndarray]]:
    """One epoch of item batches: every item of ``items`` once in a seeded random order."""
    for batch in batch_slices(rng.permutation(items), batch_size):
        yield (batch,)


def batch_slices(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` cut into batches of ``batch_size``; a last batch of one row joins the one before it (batch
    normalisation in training mode needs two rows)."""
    cuts = list(range(batch_size, len(order), batch_size))
    if cuts and len(order) - cuts[-1] == 1:
        cuts.pop()
    return np.split(order, cuts)


def as_tensors(arrays: tuple[np.ndarray, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(a, dtype=torch.long, device=device) for a in arrays)


class DistilledRecommender(ColdStartRecommender, FactorRecommender, IterativeRecommender):
    """A cold-start model that learns a content mapping from the backbone on the warm items by Adam, epoch by
    epoch (see the module docstring). Subclasses give their ``config_type`` and ``module_type`` (a module with
    a ``loss`` of a batch and the scoring ``vectors()``), and their epoch's batches where they are not
    triples."""

    config_type: type[TrainedConfig] = TrainedConfig
    config: TrainedConfig

    def __init__(self, content: np.ndarray, config: TrainedConfig | Mapping[str, Any] | None = None, *,
                 backbone: Recommender | None = None, options: TrainingOptions = TrainingOptions(),
                 **overrides: Any):
        """As :class:`ColdStartRecommender`; ``backbone`` None = :func:`default_backbone` with ``options``."""
        super().__init__(content, config, **overrides)
        self.options = options
        self.backbone = backbone if backbone is not None else default_backbone(options)
        self.epochs, self.eval_every, self.patience = self.config.epochs, self.config.eval_every, self.config.patience
        self.module: nn.Module | None = None

    #: the module a fit trains, built as ``module_type(warm data, config, generator)``
    module_type: Callable[[WarmData, Any, torch.Generator], nn.Module]

    def batches(self, data: WarmData, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        """One epoch's batches of index arrays: (users, positives, negatives) by default (:func:`triple_batches`)."""
        return triple_batches(data, rng, self.config.batch_size)

    def batch_loss(self, batch: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        """The training loss of one batch (the module in training mode): the module's ``loss`` of it."""
        return self.module.loss(*batch)

    def fit(self, history: History) -> "DistilledRecommender":
        self._train(history, None)
        return self

    def fit_monitored(self, history: History, monitor: Callable[[IterativeRecommender], float]) -> TrainingLog:
        return self._train(history, monitor)

    def _train(self, history: History, monitor: Callable[[IterativeRecommender], float] | None) -> TrainingLog:
        """Fit the backbone, then train the module from its seeded initialisation; with a monitor, keep the
        best checked state."""
        data = self.warm_data(history, self.backbone)
        if not data.has_content[data.warm].any():
            raise ValueError(f"{self.name}: no warm item has content, so there is no content mapping to learn")
        rng, generator = self.options.numpy_rng(), self.options.torch_generator()
        device = self.options.torch_device()
        with deterministic_torch(threads=None):
            self.module = module = self.module_type(data, self.config, generator).to(device)
            optimizer = torch.optim.Adam(module.parameters(), lr=self.config.lr)

            def run_epoch(epoch: int) -> float:
                module.train()
                losses = []
                for batch in self.batches(data, rng):
                    loss = self.batch_loss(as_tensors(batch, device), generator)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                return float(np.mean(losses))

            log = self.train_checked(module, run_epoch, monitor)
        return log

    def _refresh(self) -> None:
        """The scoring factors from the current weights, in evaluation mode: the module's ``vectors()``."""
        assert self.module is not None
        self.user_factors, self.item_factors = evaluation_factors(self.module)

    def diagnostics(self) -> dict[str, float | int]:
        size = {} if self.module is None else {"n_parameters": int(sum(p.numel() for p in self.module.parameters()))}
        return {**super().diagnostics(), **size}
