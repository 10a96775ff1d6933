"""SMORE: the spectral fusion against circular convolution in feature space, the fusion graph, a single
modality, the InfoNCE row cap, and the contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from multimodal_helpers import TINY, history_of, random_history
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.matching import Recommender
from vlm4rec.multimodal import SMORE
from vlm4rec.multimodal.graphs import knn_graph, max_fusion
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
    np.testing.assert_allclose(fused.numpy(), circular_convolution(circular_convolution(a_f, b_f), fused_kernel)
                               / np.sqrt(dim), atol=1e-10)


@pytest.fixture(scope="module")
def modalities():
    rng = np.random.default_rng(2)
    text = rng.normal(size=(8, 4)).astype(np.float32)
    image = rng.normal(size=(8, 6)).astype(np.float32)
    image[5] = 0.0  # an item without image
    return {"text": text, "image": image}


def test_item_graphs_are_the_weighted_knn_graphs_and_their_maximum(modalities):
    model = SMORE(modalities, knn_k=3, **TINY | {"epochs": 0}).fit(history_of(random_history(10, 8, 0.4, 3).toarray()))
    graphs = [knn_graph(x, 3, weighted=True) for x in modalities.values()]
    built = [g.matrix.toarray() for g in model.model.item_graphs]
    np.testing.assert_allclose(built[0], graphs[0].toarray(), rtol=1e-6)
    np.testing.assert_allclose(built[1], graphs[1].toarray(), rtol=1e-6)
    np.testing.assert_allclose(built[2], np.maximum(graphs[0].toarray(), graphs[1].toarray()), rtol=1e-6)
    np.testing.assert_array_equal(max_fusion(graphs).toarray(), np.maximum(graphs[0].toarray(), graphs[1].toarray()))
    assert not built[1][5].any() and not built[1][:, 5].any()  # the item without image: no image edges


def test_runs_with_one_modality_and_without_the_contrastive_term(modalities):
    history = history_of(random_history(10, 8, 0.4, 4).toarray())
    for options in ({}, {"cl_weight": 0.0, "dropout": 0.0}):
        model = SMORE({"text": modalities["text"]}, knn_k=2, **options, **TINY | {"epochs": 2}).fit(history)
        assert np.isfinite(model.score_block(np.arange(10))).all()
    with pytest.raises(ValueError):
        SMORE({})


def test_contrastive_term_uses_at_most_the_reference_batch(modalities, monkeypatch):
    import vlm4rec.multimodal.smore as smore
    seen = []
    original = smore.info_nce
    monkeypatch.setattr(smore, "info_nce", lambda a, b, t: seen.append(len(a)) or original(a, b, t))
    monkeypatch.setattr(smore, "INFO_NCE_ROWS", 5)
    SMORE(modalities, knn_k=2, **TINY | {"epochs": 1, "batch_size": 8}).fit(
        history_of(random_history(10, 8, 0.4, 5).toarray()))
    assert seen and max(seen) == 5
