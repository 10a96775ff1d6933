"""SMORE: the spectral fusion against circular convolution in feature space, the item graphs (per-modality k,
self-loops) and their maximum, the views, attention and preference gates and the training loss against a
dense re-implementation, the two-modality rule, the InfoNCE row cap, and the contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from multimodal_helpers import TINY, dense_normalized_adjacency, history_of, random_history
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.matching import Recommender
from vlm4rec.multimodal import SMORE
from vlm4rec.multimodal.smore import identity_filters, spectral_fusion


class TestSMOREContract(RecommenderContract):
    def make(self) -> Recommender:
        image = planted_item_vectors()
        return SMORE({"text": image[::-1].copy(), "image": image}, **TINY)


def circular_convolution(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a * b)[k] = sum_j a[j] b[(k - j) mod d], row by row, written as loops."""
    d = a.shape[-1]
    out = np.zeros_like(a)
    for k in range(d):
        for j in range(d):
            out[:, k] += a[:, j] * b[:, (k - j) % d]
    return out


@pytest.mark.parametrize("dim", [8, 7])
def test_identity_filters_leave_modalities_unchanged_and_fuse_by_circular_convolution(dim):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, dim)), rng.normal(size=(5, dim))
    denoised, fused = spectral_fusion([torch.tensor(a), torch.tensor(b)], identity_filters(2, dim).double(),
                                      identity_filters(1, dim)[0].double())
    np.testing.assert_allclose(denoised[0].numpy(), a, atol=1e-12)
    np.testing.assert_allclose(denoised[1].numpy(), b, atol=1e-12)
    np.testing.assert_allclose(fused.numpy(), circular_convolution(a, b) / np.sqrt(dim), atol=1e-12)


def test_filters_are_circular_convolutions_with_their_kernels():
    """A frequency-domain filter W equals circular convolution with the kernel irfft(W) (numpy's
    unnormalised transforms here, an independent implementation)."""
    rng = np.random.default_rng(1)
    dim = 8
    a, b = rng.normal(size=(4, dim)), rng.normal(size=(4, dim))
    filters = torch.tensor(rng.normal(size=(2, dim // 2 + 1, 2)))
    fused_filter = torch.tensor(rng.normal(size=(dim // 2 + 1, 2)))
    denoised, fused = spectral_fusion([torch.tensor(a), torch.tensor(b)], filters, fused_filter)
    kernels = [np.fft.irfft(w[..., 0] + 1j * w[..., 1], n=dim)[None, :] for w in filters.numpy()]
    fused_kernel = np.fft.irfft(fused_filter.numpy()[:, 0] + 1j * fused_filter.numpy()[:, 1], n=dim)[None, :]
    a_f, b_f = circular_convolution(a, kernels[0]), circular_convolution(b, kernels[1])
    np.testing.assert_allclose(denoised[0].numpy(), a_f, atol=1e-10)
    np.testing.assert_allclose(denoised[1].numpy(), b_f, atol=1e-10)
    np.testing.assert_allclose(fused.numpy(), circular_convolution(circular_convolution(a, b), fused_kernel)
                               / np.sqrt(dim), atol=1e-10)


@pytest.fixture(scope="module")
def modalities():
    rng = np.random.default_rng(2)
    text = rng.normal(size=(8, 4)).astype(np.float32)
    image = rng.normal(size=(8, 6)).astype(np.float32)
    image[5] = 0.0  # an item without image
    return {"text": text, "image": image}


def dense_knn_graph(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k by cosine, the item itself included, weighted by the cosine (non-positive ones dropped), then
    D^-1/2 S D^-1/2 by row sums; an all-zero row gets no edges. Dense numpy."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    present = norms[:, 0] > 0
    unit = np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64), where=norms > 0)
    sims = unit @ unit.T
    sims[:, ~present] = -np.inf
    graph = np.zeros_like(sims)
    for i in np.flatnonzero(present):
        top = np.argsort(-sims[i], kind="stable")[:k]
        graph[i, top] = np.maximum(sims[i, top], 0.0)
    degree = graph.sum(axis=1)
    scale = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    return scale[:, None] * graph * scale[None, :]


HISTORY = random_history(10, 8, 0.4, 3).toarray()


def test_item_graphs_are_the_weighted_knn_graphs_with_their_own_k_and_their_maximum(modalities):
    model = SMORE(modalities, image_knn_k=3, text_knn_k=2, **TINY | {"epochs": 0}).fit(history_of(HISTORY))
    graphs = [dense_knn_graph(modalities["image"], 3), dense_knn_graph(modalities["text"], 2)]
    built = [g.matrix.toarray() for g in model.model.item_graphs]
    np.testing.assert_allclose(built[0], graphs[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(built[1], graphs[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(built[2], np.maximum(*graphs), rtol=1e-5, atol=1e-7)
    assert not built[0][5].any() and not built[0][:, 5].any()  # the item without image: no image edges
    assert (np.count_nonzero(built[1], axis=1) == 2).all() and (np.diag(built[1]) > 0).all()


def layer(module: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    out = x @ module.weight.detach().double().numpy().T
    return out + module.bias.detach().double().numpy() if module.bias is not None else out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def dense_views(net, modalities: dict, dense: np.ndarray, ks: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(behavioural, side) of SMORE's equations, with numpy FFTs, dense graphs and the model's weights
    (evaluation mode: no dropout)."""
    n_users, dim = dense.shape[0], net.ego.shape[1]
    ego = net.ego.detach().double().numpy()
    adjacency = dense_normalized_adjacency(dense)
    propagated, behavioural = ego, ego.copy()
    for _ in range(net.layers):
        propagated = adjacency @ propagated
        behavioural = behavioural + propagated
    behavioural = behavioural / (net.layers + 1)
    image, text = modalities["image"], modalities["text"]
    projected = []
    for x, projection in zip((image, text), net.projections):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        projected.append(layer(projection, np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64),
                                                     where=norms > 0)) * (norms > 0))
    filters = net.modality_filters.detach().double().numpy()
    fused_w = net.fused_filter.detach().double().numpy()
    spectra = [np.fft.rfft(p, axis=1, norm="ortho") for p in projected]
    complex_filter = lambda w: w[:, 0] + 1j * w[:, 1]  # noqa: E731 (irfft ignores imag at bins 0 and d/2)
    denoised = [np.fft.irfft(s * complex_filter(w), n=dim, axis=1, norm="ortho") for s, w in zip(spectra, filters)]
    fused = np.fft.irfft(spectra[0] * spectra[1] * complex_filter(fused_w), n=dim, axis=1, norm="ortho")
    graphs = [dense_knn_graph(image, ks[0]), dense_knn_graph(text, ks[1])]
    graphs.append(np.maximum(*graphs))
    user_items = adjacency[:n_users, n_users:]
    views = []
    for feature, gate, graph in zip(denoised + [fused], net.id_gates, graphs):
        items = graph @ (ego[n_users:] * sigmoid(layer(gate[0], feature)))
        views.append(np.vstack([user_items @ items, items]))
    attended = []
    for query, view in zip(net.queries, views[:2]):
        logits = layer(query[2], np.tanh(layer(query[0], views[2])))
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        attended.append(weights / weights.sum(axis=1, keepdims=True) * view)
    preferences = [sigmoid(layer(g[0], behavioural)) for g in net.preference_gates]
    side = np.mean([p * v for p, v in zip(preferences, attended + [views[2]])], axis=0)
    return behavioural, side


@pytest.fixture(scope="module")
def reference_init(modalities):
    """A SMORE with the reference initialisation (random complex filters), trained a few epochs."""
    return SMORE(modalities, image_knn_k=3, text_knn_k=2, init="reference", dim=6, dropout=0.0,
                 **TINY | {"epochs": 3}).fit(history_of(HISTORY))


def test_views_attention_and_preference_gates_equal_a_dense_reimplementation(modalities, reference_init):
    net = reference_init.model
    net.eval()
    with torch.no_grad():
        behavioural, side = (t.double().numpy() for t in net.views(net.item_graphs))
    expected_behavioural, expected_side = dense_views(net, modalities, HISTORY, (3, 2))
    np.testing.assert_allclose(behavioural, expected_behavioural, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(side, expected_side, rtol=1e-4, atol=1e-6)
    final = expected_behavioural + expected_side
    np.testing.assert_allclose(reference_init.score_block(np.arange(10)), final[:10] @ final[10:].T,
                               rtol=1e-4, atol=1e-6)


def test_training_loss_equals_a_dense_reimplementation(modalities, reference_init):
    """BPR + l2 * 0.5 * squared final rows / batch + cl_weight * (InfoNCE(side, behavioural) over the
    positive items + over the users), temperature 0.2, recomputed with numpy."""
    net = reference_init.model
    net.train()
    net.l2, net.cl_weight = 0.3, 0.5
    users, positives, negatives = np.array([1, 2, 4, 4, 9]), np.array([0, 3, 1, 6, 2]), np.array([2, 4, 7, 0, 5])
    with torch.no_grad():
        loss = float(net.loss(*(torch.as_tensor(a) for a in (users, positives, negatives))))
    behavioural, side = dense_views(net, modalities, HISTORY, (3, 2))
    final = behavioural + side
    u, p, n = final[users], final[10 + positives], final[10 + negatives]
    expected = np.mean(np.log1p(np.exp(-(u * (p - n)).sum(axis=1))))
    expected += 0.3 * 0.5 * ((u ** 2).sum() + (p ** 2).sum() + (n ** 2).sum()) / len(users)

    def info_nce(a, b, t=0.2):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        logits = a @ b.T / t
        return np.mean(np.log(np.exp(logits).sum(axis=1)) - np.diag(logits))

    rows_i, rows_u = 10 + positives, users
    expected += 0.5 * (info_nce(side[rows_i], behavioural[rows_i]) + info_nce(side[rows_u], behavioural[rows_u]))
    assert loss == pytest.approx(expected, rel=1e-4)


def test_takes_one_image_and_one_text_modality(modalities):
    history = history_of(random_history(10, 8, 0.4, 4).toarray())
    for options in ({}, {"cl_weight": 0.0, "dropout": 0.0}, {"finetune_features": True}):
        model = SMORE({"text": modalities["text"], "image": modalities["image"]}, image_knn_k=2, text_knn_k=2,
                      **options, **TINY | {"epochs": 2}).fit(history)
        assert np.isfinite(model.score_block(np.arange(10))).all()
        assert list(model.modalities) == ["image", "text"]
    for bad in ({}, {"text": modalities["text"]}, {"text": modalities["text"], "title": modalities["text"]}):
        with pytest.raises(ValueError, match="one image"):
            SMORE(bad)


def test_fine_tuned_features_move_and_fixed_ones_do_not(modalities):
    history = history_of(HISTORY)
    tuned = SMORE(modalities, finetune_features=True, **TINY | {"epochs": 2}).fit(history).model.features
    fixed = SMORE(modalities, **TINY | {"epochs": 2}).fit(history).model.features
    assert not np.allclose(tuned.matrices()[1].detach().numpy(), fixed.matrices()[1].numpy())
    assert "features_0" in dict(tuned.named_parameters()) and not list(fixed.parameters())


def test_contrastive_term_uses_at_most_the_reference_batch(modalities, monkeypatch):
    import vlm4rec.multimodal.smore as smore
    seen = []
    original = smore.info_nce
    monkeypatch.setattr(smore, "info_nce", lambda a, b, t: seen.append(len(a)) or original(a, b, t))
    monkeypatch.setattr(smore, "INFO_NCE_ROWS", 5)
    SMORE(modalities, image_knn_k=2, text_knn_k=2, **TINY | {"epochs": 1, "batch_size": 8}).fit(
        history_of(random_history(10, 8, 0.4, 5).toarray()))
    assert seen and max(seen) == 5
