"""Tests for vlm4rec.fusion: late-fusion identity, module masking, preference training on planted data."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from recommender_contract import RecommenderContract, planted_item_vectors
from vlm4rec import fusion as fu
from vlm4rec.matching import ProfileRecommender, Recommender, recommend
from vlm4rec.splits import History, sample_negatives


def _csr(pairs: list[tuple[int, int]], shape: tuple[int, int]) -> sp.csr_matrix:
    arr = np.array(pairs)
    return sp.csr_matrix((np.ones(len(arr), np.float32), (arr[:, 0], arr[:, 1])), shape=shape)


def _history(matrix: sp.csr_matrix) -> History:
    return History(matrix=matrix, recency=matrix.copy())


def planted(seed: int = 0, n_clusters: int = 4, per_cluster: int = 30, n_users: int = 80, d: int = 16,
            n_train: int = 6, n_val: int = 2) -> tuple[dict[str, np.ndarray], History, sp.csr_matrix]:
    """Each user likes one item cluster. Modality A shows the clusters; modality B shows an unrelated
    clustering (structure that carries no preference signal)."""
    rng = np.random.default_rng(seed)
    n_items = n_clusters * per_cluster
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    a = rng.normal(size=(n_clusters, d))[cluster] + 0.5 * rng.normal(size=(n_items, d))
    b = rng.normal(size=(n_clusters, d))[rng.permutation(cluster)] + 0.5 * rng.normal(size=(n_items, d))
    train, val = [], []
    for user, liked in enumerate(rng.integers(0, n_clusters, n_users)):
        items = rng.choice(np.flatnonzero(cluster == liked), n_train + n_val, replace=False)
        train += [(user, i) for i in items[:n_train]]
        val += [(user, i) for i in items[n_train:]]
    shape = (n_users, n_items)
    return ({"A": a.astype(np.float32), "B": b.astype(np.float32)}, _history(_csr(train, shape)),
            _csr(val, shape))


TRAIN = dict(epochs=40, batch_size=32, lr=1e-2, patience=5, negatives=20)


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, np.ndarray], History, sp.csr_matrix]:
    return planted()


@pytest.fixture(scope="module")
def trained(data) -> dict[str, fu.FusionResult]:
    modalities, history, val_targets = data
    dims = {name: x.shape[1] for name, x in modalities.items()}
    return {kind: fu.train_fusion(fu.make_fusion(kind, dims, dim=16, seed=0), modalities, history, history,
                                  val_targets, seed=0, **TRAIN)
            for kind in ("attention", "gating", "frequency_filter")}


# --------------------------------------------------------------------------- weighted late fusion

def test_weighted_late_fusion_score_is_the_weighted_sum_of_per_modality_profile_scores() -> None:
    """s(u, i) = sum_m w_m <p_u^m, x_i^m>, with each term the single-modality VLM4Rec score (independent
    formulation: one ProfileRecommender per modality); a missing modality adds 0, no renormalisation."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32) * 7
    a[2] = 0.0  # item 2 has no modality a: its score is w_b * cos_b only
    a[4], b[4] = 0.0, 0.0  # item 4 has nothing: ranked last
    weights = {"a": 0.3, "b": 2.0}
    history = _history(_csr([(0, 0), (0, 1), (1, 2), (1, 5), (2, 3)], (3, 6)))
    fused = fu.WeightedLateFusion({"a": a, "b": b}, weights).fit(history)
    users = np.arange(3)
    expected = np.zeros((3, 6))
    for name, x in (("a", a), ("b", b)):
        single = ProfileRecommender(x).fit(history).score_block(users)
        expected += weights[name] * np.where(np.isfinite(single), single, 0.0)
    scores = fused.score_block(users)
    np.testing.assert_allclose(scores[:, [0, 1, 2, 3, 5]], expected[:, [0, 1, 2, 3, 5]], atol=1e-5)
    assert np.all(scores[:, 4] == -np.inf) and fused.diagnostics() == {"n_missing_items": 1}


def test_a_zero_weight_modality_leaves_the_product_but_not_the_lists() -> None:
    """Weight 0 drops the modality's columns (a cheaper product), the lists equal those of the full
    concatenation with its zero block, and an item with only that modality is still scorable (at 0)."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    a[5], b[7] = 0.0, 0.0  # item 5 has only b, item 7 only a
    history = _history(_csr([(u, i) for u in range(8) for i in rng.choice(40, 4, replace=False)], (8, 40)))
    fused = fu.WeightedLateFusion({"a": a, "b": b}, {"a": 1.0, "b": 0.0}).fit(history)
    assert fused.item_factors.shape == (40, 3) and fused.user_factors.shape == (8, 3)
    full = fu.WeightedLateFusion({"a": a, "b": b}, {"a": 1.0, "b": 1e-30}).fit(history)
    full.item_factors[:, 3:], full.user_factors[:, 3:] = 0.0, 0.0  # the zero block the weight 0 dropped
    users, exclude = np.arange(8), history.matrix
    np.testing.assert_array_equal(recommend(fused, users, exclude, 39), recommend(full, users, exclude, 39))
    assert np.isfinite(fused.score_block(users)[:, 5]).all() and fused.diagnostics() == {"n_missing_items": 0}


def test_weighted_late_fusion_rejects_bad_weights() -> None:
    x = {"a": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match="exactly the modalities"):
        fu.WeightedLateFusion(x, {"b": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        fu.WeightedLateFusion(x, {"a": -1.0})
    with pytest.raises(ValueError, match="number of items"):
        fu.WeightedLateFusion({"a": np.ones((2, 2)), "b": np.ones((3, 2))}, {"a": 1.0, "b": 1.0})


class TestWeightedLateFusionContract(RecommenderContract):
    def make(self) -> Recommender:
        return fu.WeightedLateFusion({"signal": planted_item_vectors(), "noise": planted_item_vectors(seed=3)},
                                     {"signal": 0.75, "noise": 0.25})


# --------------------------------------------------------------------------- modules

def _inputs() -> dict[str, torch.Tensor]:
    """Rows: 0 both present, 1 B missing, 2 A missing, 3 both missing."""
    torch.manual_seed(0)
    a, b = torch.randn(4, 5), torch.randn(4, 7)
    a[2:] = 0.0
    b[1] = 0.0
    b[3] = 0.0
    return {"A": a, "B": b}


@pytest.mark.parametrize("kind", ["attention", "gating", "frequency_filter"])
def test_module_shapes_and_all_missing_item_is_zero(kind: str) -> None:
    model = fu.make_fusion(kind, {"A": 5, "B": 7}, dim=8, seed=0)
    out = model(_inputs())
    assert out.shape == (4, 8)
    assert torch.all(out[3] == 0)
    assert torch.all(out[:3].norm(dim=1) > 0)
    with pytest.raises(ValueError, match="exactly the modalities"):
        model({"A": torch.ones(1, 5)})


def test_attention_masks_missing_modalities() -> None:
    model = fu.make_fusion("attention", {"A": 5, "B": 7}, dim=8, seed=0)
    inputs = _inputs()
    weights = model.modality_weights(inputs)
    h, _ = model.project(inputs)
    torch.testing.assert_close(weights.sum(dim=1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert weights[1, 1] == 0 and weights[2, 0] == 0
    out = model(inputs)
    torch.testing.assert_close(out[1], h[1, 0])  # B missing: all weight on A
    torch.testing.assert_close(out[0], weights[0, 0] * h[0, 0] + weights[0, 1] * h[0, 1])


def test_gating_masks_missing_modalities() -> None:
    model = fu.make_fusion("gating", {"A": 5, "B": 7}, dim=8, seed=0)
    inputs = _inputs()
    gates = model.modality_weights(inputs)
    h, _ = model.project(inputs)
    assert gates[1, 1] == 0 and gates[2, 0] == 0 and torch.all(gates[3] == 0)
    assert torch.all((gates[0] > 0) & (gates[0] < 1))
    torch.testing.assert_close(model(inputs)[1], gates[1, 0] * h[1, 0])


def test_frequency_filter_sum_with_identity_filters_is_sum_of_projections() -> None:
    model = fu.make_fusion("frequency_filter", {"A": 5, "B": 7}, dim=8, seed=0)
    inputs = _inputs()
    h, _ = model.project(inputs)
    torch.testing.assert_close(model(inputs), h.sum(dim=1), atol=1e-6, rtol=1e-5)


def test_frequency_filter_filters_act_per_frequency() -> None:
    model = fu.make_fusion("frequency_filter", {"A": 5, "B": 7}, dim=8, seed=0)
    with torch.no_grad():
        model.modality_filters[1] = 0.0          # B filtered out entirely
        model.fused_filter[1:] = 0.0             # keep only the zero frequency (the feature mean)
    inputs = _inputs()
    h, _ = model.project(inputs)
    expected = h[:, 0].mean(dim=1, keepdim=True).expand(-1, 8)
    torch.testing.assert_close(model(inputs), expected, atol=1e-6, rtol=1e-5)


def test_frequency_filter_product_is_circular_convolution_and_missing_is_identity() -> None:
    model = fu.make_fusion("frequency_filter", {"A": 5, "B": 7}, dim=8, seed=0, combine="product")
    inputs = _inputs()
    h, _ = model.project(inputs)
    out = model(inputs).detach().numpy()
    a, b = h[0, 0].detach().numpy(), h[0, 1].detach().numpy()
    circular = np.array([sum(a[j] * b[(k - j) % 8] for j in range(8)) for k in range(8)]) / np.sqrt(8)
    np.testing.assert_allclose(out[0], circular, atol=1e-5)
    np.testing.assert_allclose(out[1], h[1, 0].detach().numpy(), atol=1e-5)  # B missing: identity


def test_make_fusion_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown fusion kind"):
        fu.make_fusion("average", {"A": 2})  # type: ignore[arg-type]


def _global_init(kind: str, seed: int) -> list[torch.Tensor]:
    """The initial weights the modules held when they drew from torch's global generator: nn.Linear layers
    and torch.randn after torch.manual_seed(seed), in the order the constructors build them."""
    torch.manual_seed(seed)
    weights = [nn.Linear(5, 8, bias=False).weight, nn.Linear(7, 8, bias=False).weight]
    if kind == "attention":
        key = nn.Linear(8, 64)
        weights += [key.weight, key.bias, torch.randn(64) / 8.0]
    if kind == "gating":
        gate = nn.Linear(16, 2)
        weights += [gate.weight, gate.bias]
    return weights


@pytest.mark.parametrize("kind", ["attention", "gating", "frequency_filter"])
def test_initial_weights_are_torchs_defaults_drawn_without_the_global_generator(kind: str) -> None:
    state = torch.get_rng_state()
    model = fu.make_fusion(kind, {"A": 5, "B": 7}, dim=8, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    draw_order = ["projections.0.weight", "projections.1.weight", "key.weight", "key.bias", "query", "gate.weight",
                  "gate.bias"]
    parameters = dict(model.named_parameters())
    drawn = [parameters[name] for name in draw_order if name in parameters]
    expected = _global_init(kind, 4)
    assert len(drawn) == len(expected)
    for got, want in zip(drawn, expected):
        assert torch.equal(got, want)


def test_training_leaves_the_global_random_state_alone(data) -> None:
    modalities, history, val_targets = data
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    fu.fit_fusion_seeds("attention", modalities, history, history, val_targets, seeds=[0], dim=8,
                        **dict(TRAIN, epochs=1))
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)


# --------------------------------------------------------------------------- examples and leakage

def test_held_out_examples_come_from_train_history_and_skip_short_users() -> None:
    history = _csr([(0, 1), (0, 3), (0, 4), (1, 2), (2, 0), (2, 5)], (4, 6))
    users, held = fu.held_out_examples(history, np.random.default_rng(0))
    assert users.tolist() == [0, 2]  # user 1 has a single item, user 3 none
    assert all(history[u, i] == 1 for u, i in zip(users, held))


def test_batch_loss_matches_per_user_formulation() -> None:
    modalities, history, _ = planted(n_users=5, per_cluster=10)
    model = fu.make_fusion("gating", {"A": 16, "B": 16}, dim=8, seed=3)
    vectors = fu.encode(model, modalities)
    users, held = np.array([0, 3]), np.array([history.matrix[0].indices[1], history.matrix[3].indices[0]])
    negatives = sample_negatives(history.matrix, users, 4, np.random.default_rng(0))
    loss = fu._batch_loss(model, fu._as_tensors(modalities), history.matrix, users, held, negatives, 0.5)
    expected = []
    for u, pos, neg in zip(users, held, negatives):
        rest = [i for i in history.matrix[u].indices if i != pos]
        profile = vectors[rest].sum(axis=0)
        profile /= np.linalg.norm(profile)
        logits = np.array([profile @ vectors[pos]] + [profile @ vectors[j] for j in neg]) / 0.5
        expected.append(np.log(np.exp(logits).sum()) - logits[0])
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-5)


def test_validation_loss_matches_hand_computation() -> None:
    vectors = np.array([[1, 0], [0, 2], [1, 1], [1, -1]], np.float32)
    history = _history(_csr([(0, 0), (0, 1), (1, 3)], (3, 4)))
    targets = _csr([(0, 2), (1, 0), (1, 2), (2, 1)], (3, 4))  # user 2 has no history: counted, skipped
    validation = fu.validation_set(history, targets)
    assert validation.n_pairs == 3 and validation.n_users_without_history == 1
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    t = 0.5
    # user 0: profile along (1, 1); candidates: positive 2 and the unseen item 3
    p0 = np.array([1, 1]) / np.sqrt(2)
    loss_u0 = -p0 @ unit[2] / t + np.log(np.exp(p0 @ unit[2] / t) + np.exp(p0 @ unit[3] / t))
    # user 1: profile = item 3; each positive competes with the non-positive unseen item 1
    p1 = unit[3]
    losses_u1 = [-p1 @ unit[i] / t + np.log(np.exp(p1 @ unit[i] / t) + np.exp(p1 @ unit[1] / t))
                 for i in (0, 2)]
    expected = (loss_u0 + sum(losses_u1)) / 3
    assert fu.validation_loss(vectors, validation, temperature=t) == pytest.approx(expected, rel=1e-5)


def test_validation_refuses_positives_inside_the_input_history() -> None:
    history = _history(_csr([(0, 0), (0, 1)], (1, 3)))
    with pytest.raises(ValueError, match="also in the validation-input history"):
        fu.validation_set(history, _csr([(0, 1)], (1, 3)))


# --------------------------------------------------------------------------- training

def test_training_lowers_validation_loss(trained: dict[str, fu.FusionResult]) -> None:
    for kind, result in trained.items():
        assert result.best_val_loss < result.val_loss_curve[0] - 0.5, kind
        assert result.vectors.shape == (120, 16)
        np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_learned_weights_concentrate_on_the_informative_modality(data, trained) -> None:
    modalities = fu._as_tensors(data[0])
    for kind in ("attention", "gating"):
        untrained = fu.make_fusion(kind, {"A": 16, "B": 16}, dim=16, seed=0)
        before = untrained.modality_weights(modalities).mean(dim=0)
        after = trained[kind].model.modality_weights(modalities).mean(dim=0)
        assert after[0] - after[1] > 0.15, (kind, after)
        assert after[0] - after[1] > before[0] - before[1] + 0.1, (kind, before, after)


def test_zeroing_the_informative_modality_hurts_far_more(data, trained) -> None:
    modalities, history, val_targets = data
    for kind, result in trained.items():
        increase = fu.modality_ablation(result.model, modalities, history, val_targets)
        assert increase["A"] > 1.0 and increase["A"] > 20 * max(increase["B"], 1e-3), (kind, increase)


def test_returned_vectors_are_from_the_best_epoch(data, trained) -> None:
    _, history, val_targets = data
    validation = fu.validation_set(history, val_targets)
    for kind, result in trained.items():
        curve = result.val_loss_curve
        assert result.best_epoch == int(np.argmin(curve))
        assert len(curve) - 1 == result.best_epoch + TRAIN["patience"]  # stopped early, last epoch worse
        assert result.stopped_early
        assert curve[-1] > curve[result.best_epoch] + 1e-4
        assert fu.validation_loss(result.vectors, validation) == pytest.approx(curve[result.best_epoch],
                                                                                rel=1e-6)


def test_training_is_deterministic_given_the_seed(data) -> None:
    modalities, history, val_targets = data
    options = dict(TRAIN, epochs=3)
    runs = fu.fit_fusion_seeds("frequency_filter", modalities, history, history, val_targets, seeds=(7, 7, 8),
                               dim=8, **options)
    np.testing.assert_array_equal(runs[0].vectors, runs[1].vectors)
    assert runs[0].val_loss_curve == runs[1].val_loss_curve
    assert not np.allclose(runs[0].vectors, runs[2].vectors)
    assert [r.seed for r in runs] == [7, 7, 8]


def test_training_does_not_touch_the_validation_positives(data) -> None:
    """Training reads only train_history: other validation positives change the validation curve but
    not the weights after the (selected) first epoch."""
    modalities, history, val_targets = data
    keep_even_users = sp.diags((np.arange(val_targets.shape[0]) % 2 == 0).astype(np.float32))
    results, states = [], []
    for targets in (val_targets, sp.csr_matrix(keep_even_users @ val_targets)):
        model = fu.make_fusion("gating", {"A": 16, "B": 16}, dim=8, seed=0)
        results.append(fu.train_fusion(model, modalities, history, history, targets, seed=0,
                                       **dict(TRAIN, epochs=1)))
        states.append(copy.deepcopy(model.state_dict()))
    assert [r.best_epoch for r in results] == [1, 1]
    assert not any(r.stopped_early for r in results)  # one epoch: ended by the cap
    assert results[0].val_loss_curve != results[1].val_loss_curve
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=0)
