"""FREEDOM and SMORE against the authors' own code (opt-in): their classes, imported unmodified from local
checkouts, with our weights copied in, give the same item graphs, user-item graphs, scores and training
losses as vlm4rec.multimodal.freedom.FREEDOM and vlm4rec.multimodal.smore.SMORE.

Runs only when the environment variable VLM4REC_REFERENCE_DIR names a folder with the checkouts (skipped
otherwise):

    git clone https://github.com/enoche/FREEDOM  $VLM4REC_REFERENCE_DIR/FREEDOM
    git clone https://github.com/kennethorq/SMORE $VLM4REC_REFERENCE_DIR/SMORE
    # or, for either model: git clone https://github.com/enoche/MMRec $VLM4REC_REFERENCE_DIR/MMRec
    VLM4REC_REFERENCE_DIR=... python -m pytest -q tests/test_multimodal_reference.py

How (``reference_models.py``): a stand-in for their data loader, their own base class loading our feature
tables from ``.npy`` files, shims installed by monkeypatching for SciPy's removed ``dok_matrix._update``,
the ``torch_scatter`` extension and ``Tensor.cuda`` on a CPU. Both models get the same hyperparameters; ours
is configured to the reference where it has an option: ``init="reference"``, ``finetune_features=True``
(they fine-tune the feature tables), a batch of exactly ``train_batch_size`` triples.

Weight mapping (their parameter <- ours; ``ego`` is our users-then-items ID table):
  both     user_embedding.weight <- ego[:n_users]; item_id_embedding.weight <- ego[n_users:];
           image_embedding.weight / text_embedding.weight <- features.features_m (m: the image / text modality);
           image_trs / text_trs <- projections[m]
  SMORE    image_complex_weight / text_complex_weight <- modality_filters[m] (one (F, 2) filter each, F = dim//2+1);
           fusion_complex_weight <- fused_filter; gate_v, gate_t, gate_f <- id_gates[0, 1, 2];
           query_v, query_t <- queries[0, 1]; gate_image_prefer, gate_text_prefer, gate_fusion_prefer
           <- preference_gates[0, 1, 2]

Our documented deviations, and how the comparison stays within what agrees:
  - features: ours L2-normalises the rows, theirs projects the raw tables: they get our normalised tables.
  - SMORE drops a non-positive cosine among an item's top-k (theirs keeps it): the features here are
    positive, so every cosine is.
  - FREEDOM's pruning: theirs samples with ``torch.multinomial`` and keeps floor((1 - drop) * nnz) edges, ours
    with exponential keys, keeping round((1 - drop) * nnz) and each user's best-keyed edge. The same draws:
    their ``torch.multinomial`` returns the edges ours kept (after checking that it is asked for as many,
    with probabilities proportional to ours, 1 / sqrt(d_u d_i)); the history's edge count makes floor and
    round agree.
  - SMORE's dropout: theirs ``nn.Dropout`` (global random state), ours masks from the model's generator
    (zero with probability p, the rest scaled by 1 / (1 - p), as ``nn.Dropout``): their dropout module is
    replaced by one drawing the same masks from a copy of our generator.
  - SMORE's InfoNCE on the first 2,048 triples of a batch: the batch here is smaller.
  - SMORE's filters: ours has no imaginary part at the frequency-0 and dim/2 bins, which the inverse rFFT
    ignores: equal views.

Tolerance: float32 throughout, and the two codes sum in other orders (COO against CSR products, a stacked
mean against a running sum, softplus against logsigmoid), so entries differ by a few float32 roundings of
the largest terms summed: |ours - theirs| <= 1e-6 * max |theirs| over each compared array (a per-entry
relative bound would fail on entries that cancel to near zero, where both are only correct absolutely).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from multimodal_helpers import random_history
from reference_models import LAYOUT, REFERENCE_DIR, copy_weights, install_shims, reference_dir, reference_model
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.multimodal.freedom import FREEDOM, FreedomModel
from vlm4rec.multimodal.graphs import knn_graph
from vlm4rec.multimodal.smore import SMORE, SmoreModel, dropout

pytestmark = [
    pytest.mark.skipif(reference_dir() is None,
                       reason=f"opt-in check against the authors' code: {REFERENCE_DIR} is not set; expected {LAYOUT}"),
    # their code, left as it is: a deprecated torch constructor, and a user without history (degree 0)
    pytest.mark.filterwarnings("ignore:torch.sparse.SparseTensor:UserWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered in power:RuntimeWarning"),
]

RTOL = 1e-6
N_USERS, N_ITEMS, DIM, BATCH, STEPS, LR = 40, 30, 16, 64, 3, 1e-3
EDGE_DROP = 0.8  # the reference grid's first value
KNN_K = 5  # FREEDOM's neighbours per item (SMORE's image and text sizes differ: 5 and 7)
Model = FreedomModel | SmoreModel


def assert_agree(ours: np.ndarray | torch.Tensor, theirs: np.ndarray | torch.Tensor, what: str) -> None:
    """|ours - theirs| <= RTOL * max |theirs| (see the module docstring)."""
    ours, theirs = (np.asarray(torch.as_tensor(x).detach().to_dense(), dtype=np.float64) for x in (ours, theirs))
    assert ours.shape == theirs.shape, f"{what}: shapes {ours.shape} != {theirs.shape}"
    error, scale = np.abs(ours - theirs).max(), np.abs(theirs).max()
    assert error <= RTOL * scale, f"{what}: max |difference| {error:.3g} > {RTOL} * {scale:.3g}"


@pytest.fixture()
def history() -> sp.csr_matrix:
    """A user without history and an item nobody saw (see random_history); an edge count at which their
    floor and our round of (1 - EDGE_DROP) * nnz agree."""
    matrix = random_history(N_USERS, N_ITEMS, 0.25, seed=6)
    assert int(matrix.nnz * (1.0 - EDGE_DROP)) == round((1.0 - EDGE_DROP) * matrix.nnz), matrix.nnz
    return matrix


@pytest.fixture()
def modalities() -> dict[str, np.ndarray]:
    """Positive features (every cosine positive), of two widths."""
    rng = np.random.default_rng(4)
    return {"text": rng.random((N_ITEMS, 9)).astype(np.float32), "image": rng.random((N_ITEMS, 12)).astype(np.float32)}


@pytest.fixture()
def batch(history: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BATCH (user, positive, negative) triples: training positives, negatives outside the user's history."""
    rng = np.random.default_rng(5)
    users, positives = history.nonzero()
    chosen = rng.choice(len(users), BATCH, replace=False)
    dense = history.toarray()
    negatives = [rng.choice(np.flatnonzero(dense[u] == 0)) for u in users[chosen]]
    triples = (users[chosen], positives[chosen], negatives)
    return tuple(torch.as_tensor(np.asarray(a), dtype=torch.long) for a in triples)


def role(modality: str) -> str:
    """The reference's name for a modality's role: ours are named "image" and "text" here."""
    return "image" if modality == "image" else "text"


def our_features(model: Model) -> dict[str, np.ndarray]:
    """Our normalised feature tables by role (what the reference receives in place of the raw tables)."""
    return {role(name): table for name, table in zip(model.features.names, model.features.initial())}


def shared_weights(model: Model) -> dict[str, torch.Tensor]:
    """Their names for the parameters both models have: ID tables, feature tables, projections."""
    weights = {"user_embedding.weight": model.ego[:model.n_users],
               "item_id_embedding.weight": model.ego[model.n_users:]}
    for name, table, projection in zip(model.features.names, model.features.matrices(), model.projections):
        weights |= {f"{role(name)}_embedding.weight": table, f"{role(name)}_trs.weight": projection.weight,
                    f"{role(name)}_trs.bias": projection.bias}
    return weights


def module_weights(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": value for name, value in module.named_parameters()}


def smore_weights(model: SmoreModel) -> dict[str, torch.Tensor]:
    """The module docstring's mapping for SMORE (image first: our SMORE orders its modalities so)."""
    assert model.features.names[0] == "image"
    weights = shared_weights(model)
    weights |= {"image_complex_weight": model.modality_filters[:1], "text_complex_weight": model.modality_filters[1:],
                "fusion_complex_weight": model.fused_filter[None]}
    for prefix, module in zip(["gate_v", "gate_t", "gate_f"], model.id_gates):
        weights |= module_weights(prefix, module)
    for prefix, module in zip(["query_v", "query_t"], model.queries):
        weights |= module_weights(prefix, module)
    for prefix, module in zip(["gate_image_prefer", "gate_text_prefer", "gate_fusion_prefer"], model.preference_gates):
        weights |= module_weights(prefix, module)
    return weights


def build_pair(ours_recommender: FREEDOM | SMORE, weights: Callable[[Model], dict[str, torch.Tensor]],
               history: sp.csr_matrix, data_dir: Path, **reference_options) -> tuple[Model, torch.nn.Module]:
    """Our model (seed 0) and theirs with the same hyperparameters, our weights copied into theirs."""
    ours = ours_recommender.build(history, torch.Generator().manual_seed(0), torch.device("cpu"))
    theirs = reference_model(type(ours_recommender).__name__, history, our_features(ours), data_dir, BATCH,
                             embedding_size=DIM, **reference_options)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    copy_weights(theirs, weights(ours))
    return ours, theirs


@torch.no_grad()
def assert_scores_agree(ours: Model, theirs: torch.nn.Module) -> None:
    """Every user's scores of every item, in evaluation mode, on the full user-item graph."""
    ours.eval()
    theirs.eval()
    users, items = ours.vectors()
    assert_agree(users @ items.T, theirs.full_sort_predict((torch.arange(N_USERS),)), "scores")


def training_losses(model: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> list[float]:
    """The losses of STEPS Adam steps (the references' optimiser, no weight decay) on one batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    losses = []
    for _ in range(STEPS):
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return losses


def assert_training_losses_agree(ours: Model, theirs: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> None:
    our_losses = training_losses(ours, lambda: ours.loss(*batch))
    their_losses = training_losses(theirs, lambda: theirs.calculate_loss(batch))
    assert_agree(np.array(our_losses), np.array(their_losses), "training losses")
    assert len(set(our_losses)) == STEPS  # the steps changed the weights


# --------------------------------------------------------------------------- FREEDOM

@pytest.fixture()
def freedom_pair(history, modalities, tmp_path, monkeypatch) -> tuple[FreedomModel, torch.nn.Module]:
    install_shims(monkeypatch)  # projection_weight above its grid (<= 1e-3): the projection losses weigh in
    ours = FREEDOM(modalities, layers=2, item_layers=1, knn_k=KNN_K, edge_drop=EDGE_DROP, projection_weight=0.1,
                   image_weight=0.1, dim=DIM, init="reference", finetune_features=True)
    return build_pair(ours, shared_weights, history, tmp_path / "freedom",
                      feat_embed_dim=DIM, knn_k=KNN_K, n_mm_layers=1, n_ui_layers=2, reg_weight=0.1,
                      mm_image_weight=0.1, dropout=EDGE_DROP, lambda_coeff=0.9, cf_model="lightgcn", degree_ratio=1.0)


def prune_both(ours: FreedomModel, theirs: torch.nn.Module, history: sp.csr_matrix,
               monkeypatch: pytest.MonkeyPatch) -> None:
    """Our degree-sensitive pruning (seeded), then theirs with the same edges drawn (module docstring)."""
    ours.start_epoch(np.random.default_rng(6))
    kept = set(zip(*sp.csr_matrix(ours.train_adjacency.matrix[:N_USERS, N_USERS:]).nonzero()))
    users, items = theirs.edge_indices.numpy()
    user_degree, item_degree = np.bincount(users, minlength=N_USERS), np.bincount(items, minlength=N_ITEMS)
    our_weights = 1.0 / np.sqrt(user_degree[users] * item_degree[items])

    def our_draws(weights: torch.Tensor, count: int) -> torch.Tensor:
        assert count == len(kept), f"they keep {count} edges, ours {len(kept)}"
        assert_agree(weights / weights.sum(), our_weights / our_weights.sum(), "sampling probabilities")
        return torch.as_tensor([e for e, edge in enumerate(zip(users, items)) if edge in kept])

    with monkeypatch.context() as patch:
        patch.setattr(torch, "multinomial", our_draws)
        theirs.pre_epoch_processing()


def test_freedom_item_and_user_item_graphs_agree(freedom_pair, modalities):
    ours, theirs = freedom_pair
    for modality, table in [("image", theirs.image_embedding.weight), ("text", theirs.text_embedding.weight)]:
        _, their_graph = theirs.get_knn_adj_mat(table.detach())
        assert_agree(knn_graph(modalities[modality], KNN_K, weighted=False, self_loops=True).toarray(), their_graph,
                     f"{modality} kNN graph")
    assert_agree(ours.item_graphs[0].matrix.toarray(), theirs.mm_adj, "mixed item graph")
    assert_agree(ours.adjacency.matrix.toarray(), theirs.norm_adj, "user-item graph")


def test_freedom_pruned_graph_agrees_with_the_same_draws(freedom_pair, history, monkeypatch):
    ours, theirs = freedom_pair
    prune_both(ours, theirs, history, monkeypatch)
    assert ours.train_adjacency.nnz < ours.adjacency.nnz
    assert_agree(ours.train_adjacency.matrix.toarray(), theirs.masked_adj, "pruned user-item graph")


def test_freedom_scores_agree(freedom_pair):
    assert_scores_agree(*freedom_pair)


def test_freedom_training_losses_agree(freedom_pair, history, batch, monkeypatch):
    ours, theirs = freedom_pair
    prune_both(ours, theirs, history, monkeypatch)
    assert_training_losses_agree(ours, theirs, batch)


# --------------------------------------------------------------------------- SMORE

@pytest.fixture()
def smore_pair(history, modalities, tmp_path, monkeypatch) -> tuple[SmoreModel, torch.nn.Module]:
    install_shims(monkeypatch)  # l2 above its grid (<= 1e-4): the L2 term weighs in the losses
    ours = SMORE(modalities, layers=3, item_layers=1, image_knn_k=5, text_knn_k=7, cl_weight=0.01, temperature=0.2,
                 dropout=0.1, l2=1e-2, dim=DIM, init="reference", finetune_features=True)
    return build_pair(ours, smore_weights, history, tmp_path / "smore",
                      n_ui_layers=3, n_layers=1, image_knn_k=5, text_knn_k=7, cl_loss=0.01, reg_weight=1e-2,
                      dropout_rate=0.1)


def test_smore_item_and_user_item_graphs_agree(smore_pair):
    ours, theirs = smore_pair
    image, text, fusion = (graph.matrix.toarray() for graph in ours.item_graphs)
    assert_agree(image, theirs.image_original_adj, "image kNN graph")
    assert_agree(text, theirs.text_original_adj, "text kNN graph")
    assert_agree(fusion, theirs.fusion_adj, "fusion graph")
    assert_agree(ours.adjacency.matrix.toarray(), theirs.norm_adj, "user-item graph")
    assert_agree(ours.user_items.matrix.toarray(), theirs.R, "normalised user-item matrix")


def test_smore_scores_agree(smore_pair):
    assert_scores_agree(*smore_pair)


class GeneratorDropout(torch.nn.Module):
    """Their ``self.dropout`` with our masks: drawn from a copy of our model's generator, in the same order."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.generator, self.training)


def test_smore_training_losses_agree(smore_pair, batch):
    ours, theirs = smore_pair
    replay = torch.Generator()
    replay.set_state(ours.generator.get_state())
    theirs.dropout = GeneratorDropout(0.1, replay)
    assert_training_losses_agree(ours, theirs, batch)
