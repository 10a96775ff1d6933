"""The shared BPR training of vlm4rec.multimodal: losses by hand, the IterativeRecommender interface
(early stopping, best-state restore, refit reproduction), determinism, devices and candidate grids."""
from __future__ import annotations

import json
import math
from typing import get_args

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from multimodal_helpers import TINY
from recommender_contract import planted_data, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.config import GraphModel
from vlm4rec.multimodal import MODELS, LightGCN, candidates
from vlm4rec.multimodal.bpr import (ContentFeatures, NegativeSampler, bpr_loss, bpr_rows_loss, embedding_tables,
                                    info_nce, l2_penalty)
from vlm4rec.training import TrainingOptions


def test_bpr_loss_hand_computed():
    # margins u.(p - n): [1, 0].[1, 0] = 1 and [0, 2].[1, -1] = -2
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    assert bpr_loss(users, positives, negatives).item() == pytest.approx(expected, rel=1e-6)


def test_l2_penalty_hand_computed():
    # rows [1, 2], [3, 4] (batch of 2), then [0, 2] twice: 0.5 * (1 + 4 + 9 + 16 + 4 + 4) / 2
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 2.0], [9.0, 9.0]])
    assert l2_penalty(table, torch.tensor([0, 1]), torch.tensor([2, 2])).item() == pytest.approx(0.5 * 38 / 2)
    # frobenius (MMRec's EmbLoss): (sqrt(30) + sqrt(8)) / 2
    frobenius = l2_penalty(table, torch.tensor([0, 1]), torch.tensor([2, 2]), norm="frobenius").item()
    assert frobenius == pytest.approx((30 ** 0.5 + 8 ** 0.5) / 2)


def test_l2_penalty_matches_squaring_the_gathered_rows_in_value_and_gradient():
    """The counted form against the squares of the gathered rows under autograd, with rows gathered
    several times across and within the index tensors and rows never gathered."""
    table = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    indices = torch.tensor([0, 4, 0, 2]), torch.tensor([1, 1, 4, 0]), torch.tensor([3, 2, 1, 1])
    results = []
    for penalty in (lambda t: l2_penalty(t, *indices),
                    lambda t: 0.5 * sum(t[i].pow(2).sum() for i in indices) / len(indices[0])):
        leaf = table.clone().requires_grad_()
        value = penalty(leaf)
        value.backward()
        results.append((value.item(), leaf.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-15)
    assert results[0][1][5].abs().sum() == 0  # a row outside the batch gets no gradient


def test_info_nce_hand_computed():
    # normalised anchors [[1, 0], [0, 1]], positives [[1, 0], [0.6, 0.8]]: cosines c = [[1, 0.6], [0, 0.8]]
    anchors = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    positives = torch.tensor([[2.0, 0.0], [0.6, 0.8]])
    t = 0.5
    row0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0.6 / t)))
    row1 = -math.log(math.exp(0.8 / t) / (math.exp(0 / t) + math.exp(0.8 / t)))
    assert info_nce(anchors, positives, t).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_content_features_normalise_and_mark_missing_rows():
    x = np.array([[3, 4], [0, 0], [1, 0]], dtype=np.float32)
    features = ContentFeatures({"a": x, "b": np.ones((3, 5), dtype=np.float32)}, n_items=3)
    np.testing.assert_allclose(features.matrices()[0].numpy(), [[0.6, 0.8], [0, 0], [1, 0]])
    assert features.presence()[0].ravel().tolist() == [True, False, True]
    assert features.names == ("a", "b")
    with pytest.raises(ValueError, match="4 items"):
        ContentFeatures({"a": x}, n_items=4)


@pytest.fixture(scope="module")
def planted():
    return planted_data()


def test_every_model_params_yaml_accepts_is_registered_under_its_own_name():
    assert tuple(MODELS) == get_args(GraphModel)
    assert all(cls.name == name for name, cls in MODELS.items())


def all_scores(model, n_users: int) -> np.ndarray:
    return model.score_block(np.arange(n_users)).copy()


PAPER_OPTIONS = {"init": "reference", "negatives": "seen", "lr_decay": 0.5}


@pytest.mark.parametrize("options", [{}, PAPER_OPTIONS], ids=["fast", "paper"])
def test_same_seed_gives_byte_identical_scores_and_another_seed_does_not(planted, options):
    image = planted_item_vectors()
    vectors = {"image": image, "text": image[::-1].copy()}
    for name, cls in MODELS.items():
        content = {} if name == "lightgcn" else {"modalities": vectors}
        settings = TINY | {"epochs": 5} | options
        first = all_scores(cls(**content, **settings, options=TrainingOptions(seed=3)).fit(planted.history), 60)
        again = all_scores(cls(**content, **settings, options=TrainingOptions(seed=3)).fit(planted.history), 60)
        other = all_scores(cls(**content, **settings, options=TrainingOptions(seed=4)).fit(planted.history), 60)
        assert first.tobytes() == again.tobytes(), name
        assert not np.array_equal(first, other), name


def test_fitting_leaves_the_global_random_state_alone(planted):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    LightGCN(**TINY | {"epochs": 2}).fit(planted.history)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)


class ScriptedMonitor:
    """Returns scripted validation values in turn and keeps a copy of the model's scores at each check."""

    def __init__(self, values: list[float], n_users: int):
        self.values, self.n_users, self.scores = list(values), n_users, []

    def __call__(self, model) -> float:
        self.scores.append(all_scores(model, self.n_users))
        return self.values.pop(0)


def test_fit_monitored_stops_after_patience_and_restores_the_best_state(planted):
    model = LightGCN(**TINY | {"epochs": 30}, eval_every=2, patience=2, options=TrainingOptions(seed=1))
    monitor = ScriptedMonitor([0.1, 0.2, 0.5, 0.4, 0.3, 0.9], n_users=60)
    log = model.fit_monitored(planted.history, monitor)
    assert [epoch for epoch, _ in log.curve] == [0, 2, 4, 6, 8]      # stopped: 2 checks without gain
    assert [value for _, value in log.curve] == [0.1, 0.2, 0.5, 0.4, 0.3]
    assert log.best_epoch == 4 and log.epochs_run == 8 and len(log.train_loss) == 8 and log.stopped_early
    best_scores = monitor.scores[2]
    np.testing.assert_array_equal(all_scores(model, 60), best_scores)
    refit = LightGCN(**TINY | {"epochs": log.best_epoch}, options=TrainingOptions(seed=1)).fit(planted.history)
    np.testing.assert_array_equal(all_scores(refit, 60), best_scores)


def test_fit_monitored_keeps_the_initial_state_when_nothing_improves_and_checks_the_last_epoch(planted):
    model = LightGCN(**TINY | {"epochs": 5}, eval_every=2, patience=10, options=TrainingOptions(seed=2))
    monitor = ScriptedMonitor([0.5, 0.4, 0.3, 0.2], n_users=60)
    log = model.fit_monitored(planted.history, monitor)
    assert [epoch for epoch, _ in log.curve] == [0, 2, 4, 5]
    assert log.best_epoch == 0 and not log.stopped_early  # ran to its epoch cap
    np.testing.assert_array_equal(all_scores(model, 60), monitor.scores[0])
    untrained = LightGCN(**TINY | {"epochs": 0}, options=TrainingOptions(seed=2)).fit(planted.history)
    np.testing.assert_array_equal(all_scores(untrained, 60), monitor.scores[0])


def test_training_loss_decreases(planted):
    log = LightGCN(**TINY, eval_every=10).fit_monitored(planted.history, lambda model: 0.0)
    assert log.train_loss[-1] < 0.7 * log.train_loss[0]


def test_bad_training_parameters_are_refused():
    for bad in ({"lr": 0.0}, {"l2": -1.0}, {"batch_size": 0}, {"epochs": -1}, {"patience": 0}, {"lr_decay": 0.0},
                {"lr_decay_step": 0},
                {"lr_decay": 1.5}, {"init": "uniform"}, {"negatives": "popular"}):
        with pytest.raises(ValueError):
            LightGCN(**bad)


def test_candidates_build_the_grid_product_with_the_seed():
    image = planted_item_vectors()
    grid = {"lr": [0.01, 0.05], "knn_k": [5, 10, 20]}
    cands = candidates("freedom", {"image": image}, grid, fixed={"epochs": 7, "device": "cpu"}, seed=5)
    assert [c.config for c in cands][:2] == [{"epochs": 7, "device": "cpu", "lr": 0.01, "knn_k": 5},
                                             {"epochs": 7, "device": "cpu", "lr": 0.01, "knn_k": 10}]
    assert len(cands) == 6
    json.dumps([c.config for c in cands])
    model = cands[-1].build()
    assert type(model).__name__ == "FREEDOM"
    assert (model.lr, model.knn_k, model.epochs, model.options) == (0.05, 20, 7, TrainingOptions("cpu", 5))
    assert cands[0].build() is not cands[0].build()


def test_candidates_check_the_modalities():
    image = {"image": planted_item_vectors()}
    assert len(candidates("lightgcn", {}, {"layers": [1, 2]})) == 2
    with pytest.raises(ValueError, match="no modalities"):
        candidates("lightgcn", image, {})
    with pytest.raises(ValueError, match="at least one"):
        candidates("smore", {}, {})
    with pytest.raises(ValueError, match="unknown model"):
        candidates("mf", {}, {})
    with pytest.raises(ValueError, match="seed"):
        candidates("vbpr", image, {"seed": [1, 2]})


def test_the_study_grids_build_every_candidate():
    import yaml
    from pathlib import Path

    graph = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["graph"]
    image = {"image": planted_item_vectors(), "text": planted_item_vectors()[::-1].copy()}
    for grids in (graph["default"]["grids"], graph["full"]["grids"]):
        assert set(grids) == set(MODELS)
        for name, grid in grids.items():
            cands = candidates(name, {} if name == "lightgcn" else image, grid)
            assert len(cands) == math.prod(len(values) for values in grid.values())
            for cand in cands:
                cand.build()  # an unknown hyperparameter would raise here


def test_seen_negatives_come_only_from_items_with_a_training_positive():
    history = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=np.float32))
    users = np.repeat([0, 1, 2], 200)
    seen = NegativeSampler(history, "seen")(users[:400], np.random.default_rng(0))
    assert set(seen[:200]) == {1, 2} and set(seen[200:]) == {0, 2}
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(history, "seen")(np.array([2]), np.random.default_rng(0))
    drawn = NegativeSampler(history, "all")(users, np.random.default_rng(0))
    assert set(drawn[users == 2]) == {3, 4} and set(drawn[users == 0]) == {1, 2, 3, 4}


@pytest.mark.parametrize("schedule, expected", [
    ({"lr_decay": 0.5}, [0.1, 0.09862327044933592, 0.09726549474122855]),  # 0.1 * 0.5^(e / 50), MMRec's default
    ({"lr_decay": 0.5, "lr_decay_step": 1}, [0.1, 0.05, 0.025, 0.0125]),  # 0.1 * 0.5^e: halved every epoch
    ({"lr_decay": 0.25, "lr_decay_step": 2}, [0.1, 0.05, 0.025]),  # 0.1 * 0.25^(e / 2)
])
def test_the_learning_rate_decays_as_mmrec_lambda_lr(planted, monkeypatch, schedule, expected):
    """lr(epoch e, counted from 0) = lr * lr_decay ** (e / lr_decay_step), MMRec's LambdaLR stepped after
    each epoch; the values by hand."""
    rates = []
    original = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: rates.append(self.param_groups[0]["lr"]) or original(self, *a, **k))
    LightGCN(**TINY | {"epochs": len(expected), "batch_size": 10**6, "lr": 0.1, **schedule}).fit(planted.history)
    np.testing.assert_allclose(rates, expected, rtol=1e-12)


def test_gathered_bpr_matches_bpr_of_gathered_rows_in_value_and_gradients():
    """``bpr_rows_loss`` (one autograd node, gradients scattered by hand) against ``bpr_loss`` of the
    gathered rows under autograd, with repeated users and items and an item that is both a positive and a
    negative."""
    generator = torch.Generator().manual_seed(0)
    tables = [torch.randn(5, 3, generator=generator, dtype=torch.float64) for _ in range(2)]
    users, positives, negatives = torch.tensor([0, 4, 0, 2]), torch.tensor([1, 1, 3, 0]), torch.tensor([3, 2, 1, 1])
    results = []
    for loss in (lambda u, i: bpr_rows_loss(u, i, users, positives, negatives),
                 lambda u, i: bpr_loss(u[users], i[positives], i[negatives])):
        user_table, item_table = (t.clone().requires_grad_() for t in tables)
        value = loss(user_table, item_table)
        value.backward()
        results.append((value.item(), user_table.grad, item_table.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    for ours, autograd in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(ours, autograd, rtol=1e-12, atol=1e-15)
    assert results[0][1][[1, 3]].abs().sum() == 0  # users outside the batch get no gradient


def test_reference_initialisation_draws_each_id_table_xavier_uniform():
    generator = torch.Generator().manual_seed(0)
    table = embedding_tables((400, 30), 10, generator, "reference").detach().numpy()
    assert np.abs(table[:400]).max() <= np.sqrt(6 / 410) < np.abs(table[400:]).max() <= np.sqrt(6 / 40)
    normal = embedding_tables((400, 30), 10, torch.Generator().manual_seed(0), "normal").detach().numpy()
    assert normal.std() == pytest.approx(0.1, rel=0.1)
