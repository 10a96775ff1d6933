"""The BPR training every model of this package shares, as an :class:`~vlm4rec.matching.IterativeRecommender`.

Protocol (BPR, Rendle et al., UAI 2009, as LightGCN, VBPR, FREEDOM and SMORE train): an epoch visits
every positive (user, item) of the fitted history once, in a seeded random order, each paired with one
negative drawn uniformly from the items outside that user's fitted history; Adam takes one step per
batch of ``batch_size`` triples, and the model's forward pass (its graph propagation) runs once per
batch. Batches are large (thousands of triples) because on a CPU the propagation, not the triples,
costs the time.

A model scores by a dot product of a user vector and an item vector (:meth:`BPRModel.vectors`); both
are computed once after training (and before each validation check) and scored as the factors of a
:class:`~vlm4rec.matching.FactorRecommender`, one matrix product per block of users.

Two training regimes use these options (``params.yaml: graph.regime``; docs/protocol.md):
``fast`` (large batches, a high learning rate, few validation checks, N(0, 0.1^2) initial embeddings) fits
a 2-core CPU (per-model exceptions in ``graph.training.fast.models``: FREEDOM trains longer at lr 0.0125);
``paper`` is the references' optimiser (MMRec's ``overall.yaml``, the code FREEDOM's and SMORE's authors
published in): Adam lr 1e-3, batch 2048, up to 1000 epochs, a validation check every epoch, patience 20,
the references' initialisation (``init="reference"``), negatives drawn from the items seen in training
(``negatives="seen"``) and each model's own learning-rate decay (SMORE: 0.96^(epoch/50)).

Negatives: ``negatives="all"`` draws each negative uniformly from every item of the catalogue outside the
user's fitted history (items without a training positive included); ``"seen"`` draws it from the items
with at least one positive in the fitted history, outside the user's history, as MMRec's
``TrainDataLoader`` does (``all_items`` = the item ids of the training interactions).

New items (``unseen_items="content"``, the strict new-item protocol, docs/protocol.md "New items"): the
items without a positive in the fitted history have no ID parameters (:meth:`BPRModel.forget_items` zeroes
them at build and after every Adam step) and are never drawn as negatives, as if they arrived after
training; such an item is scored from its content alone (VBPR's content term, FREEDOM's and SMORE's
item-item content graph). ``"learned"`` (the default) trains every item's table row like any parameter.

Reproducibility: each fit draws its initial weights and every random choice (order, negatives, edge
dropout, dropout masks) from its own ``torch.Generator`` and ``numpy`` generator seeded with ``options.seed``;
no global random state is read or changed, and torch's deterministic algorithms are requested during the
fit (``warn_only``: an operation without a deterministic version warns instead of failing, so a CUDA fit is
not guaranteed identical; the settings are restored afterwards). Two CPU fits with the same seed give
byte-identical scores.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from vlm4rec.layers import rows
from vlm4rec.methods import BPRConfig, Init, L2Norm, Negatives
from vlm4rec.matching import FactorRecommender, IterativeRecommender, stored_coordinates
from vlm4rec.reproducibility import deterministic_torch
from vlm4rec.splits import History, binarize, history_membership, sample_negatives
from vlm4rec.training import TrainingLog, TrainingOptions
from vlm4rec.vectors import check_modalities, normalize_rows

INIT_STD = 0.1  # N(0, 0.1^2) initial embeddings, as LightGCN's PyTorch port (the fast regime's choice)


# --------------------------------------------------------------------------- losses and initialisation

def bpr_loss(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(u.p - u.n) over the rows of the three (batch, d) tensors (Rendle et al. 2009)."""
    margin = (users * (positives - negatives)).sum(dim=-1)
    return F.softplus(-margin).mean()


class _GatheredBPR(torch.autograd.Function):
    """BPR of table rows as one autograd node: the forward gathers the batch's rows, the backward
    scatter-adds their gradients straight into the two tables (no intermediate per-row gradients)."""

    @staticmethod
    def forward(ctx, user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor,  # type: ignore[override]
                positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        batch_users = user_table.index_select(0, users)
        difference = item_table.index_select(0, positives).sub_(item_table.index_select(0, negatives))
        margin = (batch_users * difference).sum(dim=1)
        ctx.save_for_backward(batch_users, difference, margin, users, positives, negatives)
        ctx.table_shapes = (user_table.shape, item_table.shape)
        return F.softplus(-margin).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        batch_users, difference, margin, users, positives, negatives = ctx.saved_tensors
        user_shape, item_shape = ctx.table_shapes
        # d loss / d margin_b = -sigmoid(-margin_b) / batch
        weight = (torch.sigmoid(-margin) * (-grad / len(margin))).unsqueeze(1)
        user_grad = batch_users.new_zeros(user_shape).index_add_(0, users, difference * weight)
        item_step = batch_users * weight
        item_grad = batch_users.new_zeros(item_shape).index_add_(0, positives, item_step)
        return user_grad, item_grad.index_add_(0, negatives, item_step, alpha=-1), None, None, None


def bpr_rows_loss(user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor, positives: torch.Tensor,
                  negatives: torch.Tensor) -> torch.Tensor:
    """``bpr_loss`` of the rows ``users`` of ``user_table`` against the rows ``positives`` and ``negatives``
    of ``item_table``, in one autograd node: the same value and gradients, about half the time of gathering
    the rows first on a CPU (fewer temporaries of batch x dim): LightGCN's and FREEDOM's BPR step."""
    return _GatheredBPR.apply(user_table, item_table, users, positives, negatives)


def l2_penalty(table: torch.Tensor, *indices: torch.Tensor, norm: L2Norm = "squared") -> torch.Tensor:
    """The L2 term of the embeddings a batch touches, the blocks ``table[index]`` for each ``index`` of
    ``indices``, over the batch size (the length of the first index).

    ``squared``: 0.5 * the sum of the blocks' squared entries / batch (the papers' L2, LightGCN's reference
    loss), computed as each row's squared norm weighted by how often the batch gathers it: the same value
    and gradient as squaring the gathered rows (up to rounding), at O(rows of the table) instead of
    O(batch x dim) (about 30% of a LightGCN epoch on a CPU went to squaring and scattering back 98,304 rows).
    ``frobenius``: the sum of the blocks' Frobenius norms (not squared) / batch: MMRec's ``EmbLoss``, the
    penalty its LightGCN and VBPR ``reg_weight`` grids are written for."""
    if norm == "frobenius":
        return sum(torch.linalg.vector_norm(rows(table, index)) for index in indices) / len(indices[0])
    counts = torch.bincount(torch.cat(indices), minlength=len(table)).to(table.dtype)
    return 0.5 * (counts @ table.pow(2).sum(dim=1)) / len(indices[0])


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of row i of ``anchors`` against row i of ``positives``, the other rows being negatives:
    mean of -log(exp(c_ii / t) / sum_j exp(c_ij / t)), c = cosine."""
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))


def embedding_tables(sizes: Sequence[int], dim: int, generator: torch.Generator, init: Init) -> nn.Parameter:
    """ID tables of ``sizes`` rows each (e.g. users then items), stacked into one parameter: every entry
    N(0, INIT_STD^2) (``normal``), or each table Xavier-uniform on its own ``(rows, dim)`` shape
    (``reference``: MMRec's LightGCN, VBPR, FREEDOM and SMORE initialise their tables so)."""
    if init == "normal":
        return nn.Parameter(torch.randn((sum(sizes), dim), generator=generator) * INIT_STD)
    if init != "reference":
        raise ValueError(f"init must be 'normal' or 'reference', got {init!r}")
    tables = [nn.init.xavier_uniform_(torch.empty(n, dim), generator=generator) for n in sizes]
    return nn.Parameter(torch.cat(tables))


def dropout(x: torch.Tensor, p: float, generator: torch.Generator, training: bool) -> torch.Tensor:
    """Inverted dropout with masks drawn from ``generator`` (identity outside training or at p = 0)."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator) >= p
    return x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - p)


# --------------------------------------------------------------------------- content features

class ContentFeatures(nn.Module):
    """Modality matrices as model inputs: L2-normalised rows (an all-zero row, a missing item, stays zero)
    and a presence mask per modality, in the order given. Fixed inputs by default; ``trainable`` makes
    them parameters that the loss fine-tunes (the FREEDOM and SMORE reference code loads its feature
    tables with ``nn.Embedding.from_pretrained(..., freeze=False)``); the presence masks stay fixed."""

    def __init__(self, modalities: Mapping[str, np.ndarray], n_items: int, trainable: bool = False):
        super().__init__()
        n_rows = check_modalities(modalities)
        if n_rows != n_items:
            raise ValueError(f"modalities have {n_rows} rows, the history has {n_items} items")
        self.names = tuple(modalities)
        for index, x in enumerate(modalities.values()):
            normalised = torch.as_tensor(normalize_rows(x))
            if trainable:
                setattr(self, f"features_{index}", nn.Parameter(normalised))
            else:  # fixed inputs, not state: kept out of state_dict so that best-state copies stay small
                self.register_buffer(f"features_{index}", normalised, persistent=False)
            self.register_buffer(f"present_{index}", normalised.ne(0).any(dim=1, keepdim=True), persistent=False)

    def __len__(self) -> int:
        return len(self.names)

    def matrices(self) -> list[torch.Tensor]:
        """``(n_items, d_m)`` normalised features per modality."""
        return [getattr(self, f"features_{m}") for m in range(len(self))]

    def initial(self) -> list[np.ndarray]:
        """The features as numpy arrays (before any fine-tuning when called at build time): what the
        item-item graphs are built from."""
        return [x.detach().cpu().numpy() for x in self.matrices()]

    def presence(self) -> list[torch.Tensor]:
        """``(n_items, 1)`` bool per modality: the item has this feature."""
        return [getattr(self, f"present_{m}") for m in range(len(self))]

    def projected(self, projections: nn.ModuleList) -> list[torch.Tensor]:
        """Each modality through its own projection, zero for the items that lack the modality."""
        return [proj(x) * present for proj, x, present in zip(projections, self.matrices(), self.presence())]


# --------------------------------------------------------------------------- model and trainer

class BPRModel(nn.Module):
    """A model the trainer can fit: a BPR loss on a batch of triples and the vectors it scores with."""

    def start_epoch(self, rng: np.random.Generator) -> None:
        """Per-epoch preparation (FREEDOM resamples its graph); nothing by default."""

    def loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch of (user, positive item, negative item) index triples."""
        raise NotImplementedError

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors (n_users, d), item vectors (n_items, d)); score(u, i) = user_u . item_i."""
        raise NotImplementedError

    def forget_items(self, items: torch.Tensor) -> None:
        """Zero the ID parameters (embeddings, biases) of ``items``: new items have none."""
        raise NotImplementedError


@torch.no_grad()
def evaluation_factors(module: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """A module's scoring factors, its ``vectors()`` in evaluation mode (no dropout), as float32 arrays (the
    items' C-contiguous) for the matching engine."""
    module.eval()
    users, items = module.vectors()
    return users.float().cpu().numpy(), np.ascontiguousarray(items.float().cpu().numpy())


class NegativeSampler:
    """One negative per (sorted) user index, uniform over the candidate items outside that user's fitted
    history: every item (``all``) or the items with a positive in the fitted history (``seen``)."""

    def __init__(self, matrix: sp.csr_matrix, negatives: Negatives):
        self.pool = np.flatnonzero(matrix.getnnz(axis=0)) if negatives == "seen" else None
        self.matrix = matrix if self.pool is None else matrix[:, self.pool].tocsr()
        self.in_history = history_membership(self.matrix)  # built once per fit, used every epoch

    def __call__(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        drawn = sample_negatives(self.matrix, users, 1, rng, in_history=self.in_history)[:, 0]
        return drawn if self.pool is None else self.pool[drawn]


class BPRRecommender(FactorRecommender, IterativeRecommender):
    """Trains a :class:`BPRModel` built by :meth:`build` with BPR, epoch by epoch (see module docstring).

    ``dim``          embedding size (fixed at 64 across the study, as in the four papers' experiments)
    ``lr``           Adam learning rate (0.05: with batches this large, 0.01 needs several times the epochs)
    ``l2``           weight of the model's L2 term (see each model)
    ``epochs``       epochs of :meth:`fit`; the most :meth:`fit_monitored` trains
    ``batch_size``   (user, positive, negative) triples per Adam step (32768: the propagation, paid once per
                     step, dominates a step's cost on a CPU, so fewer, larger steps make an epoch cheaper)
    ``eval_every``   :meth:`fit_monitored` checks validation every this many epochs (and after the last)
    ``patience``     ... and stops after this many checks without improvement
    ``options``      device (``cpu`` | ``cuda`` | ``cuda:N`` | ``auto``) and the seed of initial weights, order,
                     negatives, dropout (:class:`~vlm4rec.training.TrainingOptions`)
    ``init``         ``normal`` (ID tables N(0, 0.1^2), Xavier-uniform linear layers: the fast regime) |
                     ``reference`` (each model's reference initialisation, see the model)
    ``lr_decay``     gamma of the learning-rate schedule lr * gamma^(epoch / lr_decay_step), stepped after
                     every epoch (MMRec's ``learning_rate_scheduler: [gamma, step]`` as a ``LambdaLR``; 1 =
                     constant, SMORE's reference 0.96); it depends on the epoch alone, so a refit for the
                     chosen number of epochs replays the selection run's schedule
    ``lr_decay_step`` epochs over which the learning rate falls by ``lr_decay`` (MMRec's 50; 1 = by
                     ``lr_decay`` every epoch)
    ``negatives``    ``all`` | ``seen`` (see the module docstring)
    ``unseen_items`` ``learned`` | ``content`` (new items scored from content alone; see the module docstring)
    Defaults are the fast regime's; subclasses may change them (VBPR's lr and l2, FREEDOM's l2, SMORE's
    lr_decay). Each model validates its options with its pydantic configuration :attr:`Config`
    (:mod:`vlm4rec.methods`, the same one params.yaml's per-model options are checked against at load): a bad
    option is a :class:`pydantic.ValidationError` (a ``ValueError``) naming it; the validated options become
    the model's attributes and ``config``.
    """

    name = "bpr"
    Config: ClassVar[type[BPRConfig]] = BPRConfig

    def __init__(self, *, options: TrainingOptions = TrainingOptions(), **settings: Any):
        self.config = self.Config(**settings)
        for key, value in self.config:
            setattr(self, key, value)
        self.options = options
        self.model: BPRModel | None = None

    @abstractmethod
    def build(self, history: sp.csr_matrix, generator: torch.Generator, device: torch.device) -> BPRModel:
        """A freshly initialised model for the binary ``history`` (graphs from it alone)."""

    # ----------------------------------------------------------------------- fitting

    def fit(self, history: History) -> "BPRRecommender":
        self._train(history, None)
        return self

    def fit_monitored(self, history: History, monitor: Callable[[IterativeRecommender], float]) -> TrainingLog:
        return self._train(history, monitor)

    def _train(self, history: History, monitor: Callable[[IterativeRecommender], float] | None) -> TrainingLog:
        """Train from the seeded initialisation; with a monitor, keep the best checked state."""
        matrix = binarize(history.matrix)
        if matrix.nnz == 0:
            raise ValueError(f"{self.name}: the history holds no interactions to train on")
        rng, generator = self.options.numpy_rng(), self.options.torch_generator()
        device = self.options.torch_device()
        with deterministic_torch(threads=None):  # all of torch's threads: these models are the slow part
            self.model = model = self.build(matrix, generator, device)
            new_items = (torch.as_tensor(np.flatnonzero(matrix.getnnz(axis=0) == 0), device=device)
                      if self.unseen_items == "content" else None)
            self._forget(new_items)
            optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
            sampler = NegativeSampler(matrix, "seen" if new_items is not None else self.negatives)

            def run_epoch(epoch: int) -> float:
                loss = self._epoch(matrix, optimizer, sampler, rng, new_items)
                schedule.step()
                return loss

            log = self.train_checked(model, run_epoch, monitor)
        return log

    def lr_factor(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch + 1`` (after ``epoch`` completed epochs) over ``lr``:
        lr_decay^(epoch / lr_decay_step)."""
        return self.lr_decay ** (epoch / self.lr_decay_step)

    @torch.no_grad()
    def _forget(self, new_items: torch.Tensor | None) -> None:
        """Zero the new items' ID parameters (``unseen_items="content"``; nothing otherwise)."""
        if new_items is not None and len(new_items):
            assert self.model is not None
            self.model.forget_items(new_items)

    def _epoch(self, matrix: sp.csr_matrix, optimizer: torch.optim.Optimizer, sampler: "NegativeSampler",
               rng: np.random.Generator, new_items: torch.Tensor | None = None) -> float:
        """One pass over every positive in a random order; the mean batch loss."""
        assert self.model is not None
        model = self.model
        model.train()
        model.start_epoch(rng)
        order = rng.permutation(matrix.nnz)
        users, positives = stored_coordinates(matrix)
        negatives = sampler(users, rng)  # users sorted: a cache-friendly search
        users, positives, negatives = users[order], positives[order], negatives[order]
        device = next(model.parameters()).device
        losses = []
        for start in range(0, len(order), self.batch_size):
            batch = slice(start, start + self.batch_size)
            triple = [torch.as_tensor(a[batch], dtype=torch.long, device=device)
                      for a in (users, positives, negatives)]
            loss = model.loss(*triple)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self._forget(new_items)
            losses.append(loss.item())
        return float(np.mean(losses))

    def _refresh(self) -> None:
        """Recompute the scoring vectors from the current weights (evaluation mode: no dropout)."""
        assert self.model is not None
        self.user_factors, self.item_factors = evaluation_factors(self.model)

    def diagnostics(self) -> dict[str, float | int]:
        if self.model is None:
            return {}
        return {"n_parameters": int(sum(p.numel() for p in self.model.parameters()))}
