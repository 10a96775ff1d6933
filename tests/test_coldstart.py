"""The cold-start package as the new-item stage will use it: candidates from a grid, validated before any
training, selected and early-stopped on the validation new items and tested once, over one shared backbone."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest
from coldstart_helpers import planted  # noqa: F401  (module-scoped fixture)
from coldstart_helpers import planted_new_item_data, shared_backbone
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.cold_start import select_and_test_new_items
from vlm4rec.coldstart import MODELS, TRAINED, candidates

GRIDS = {"content_regression": {"hidden": [[8], []]}, "dropoutnet": {"dropout": [0.5]}, "aldi": {"alpha": [0.9]},
         "collective_ease": {"alpha": [1.0, 2.0]}, "additive_ease": {"beta": [0.5]}}
FIXED = {"content_regression": {"lr": 0.01}, "dropoutnet": {"lr": 0.01, "hidden": [12, 8]},
         "aldi": {"lr": 0.01, "hidden": [12]}, "collective_ease": {"l2": 20.0}, "additive_ease": {"l2": 5.0}}
TRAINING = {"epochs": 20, "batch_size": 32, "eval_every": 5, "patience": 2}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_is_selected_and_tested_on_the_new_items(planted, model):
    data = planted_new_item_data(planted)
    backbone = shared_backbone(planted)
    fixed = FIXED[model] | (TRAINING if model in TRAINED else {})
    shared = {"backbone": backbone} if model in TRAINED else {}
    results = select_and_test_new_items(
        model, lambda seed: candidates(model, planted.content, GRIDS[model], fixed, seed, **shared), data, [3],
        "ndcg@3", seeds=[0] if model in TRAINED else None)
    (result,) = results["cold"].values()
    assert result.test_per_user["recall@3"].mean() > 0.8
    assert ("epochs" in result.config) == (model in TRAINED)  # early stopping chose the trained ones' epochs


def test_a_bad_configuration_fails_before_any_training(planted):
    with pytest.raises(pydantic.ValidationError, match="dropuot"):
        candidates("dropoutnet", planted.content, {"dropuot": [0.5]})
    with pytest.raises(pydantic.ValidationError, match="dropout"):
        candidates("dropoutnet", planted.content, {"dropout": [1.5]})
    with pytest.raises(ValueError, match="unknown cold-start model 'heater'"):
        candidates("heater", planted.content, {})
    with pytest.raises(ValueError, match="closed form"):
        candidates("collective_ease", planted.content, {}, {"device": "cpu"})
    with pytest.raises(ValueError, match="content must be a 2-d"):
        candidates("aldi", planted.content[:, 0], {})[0].build()


def test_candidates_follow_the_grid_and_the_seed(planted):
    grid = candidates("aldi", planted.content, {"alpha": [0.1, 0.9], "beta": [0.0, 0.05]}, {"epochs": 3}, seed=7)
    assert [c.config for c in grid] == [{"epochs": 3, "alpha": a, "beta": b} for a in (0.1, 0.9) for b in (0.0, 0.05)]
    model = grid[1].build()
    assert (model.config.alpha, model.config.beta, model.epochs, model.options.seed) == (0.1, 0.05, 3, 7)
    np.testing.assert_array_equal(model.content.any(axis=1), planted.content.any(axis=1))
