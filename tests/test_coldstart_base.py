"""The cold-start models' shared parts: content checks, warm / new items, batches, seeded training and the
early stopping that validation drives, and a backbone shared among models."""
from __future__ import annotations

import numpy as np
import pytest
from coldstart_helpers import backbone, planted  # noqa: F401  (module-scoped fixtures)
from coldstart_helpers import planted_new_items, shared_backbone
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.coldstart import ContentRegression, DropoutNet
from vlm4rec.coldstart.base import batch_slices, content_inputs
from vlm4rec.training import TrainingOptions


def test_content_rows_are_normalised_and_zero_rows_mark_missing_content():
    content, present = content_inputs(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    np.testing.assert_allclose(content, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    np.testing.assert_array_equal(present, [True, False, True])
    with pytest.raises(ValueError, match="non-finite"):
        content_inputs(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-d"):
        content_inputs(np.ones(3))


def test_the_history_and_the_content_must_agree_and_a_warm_item_must_have_content(planted, backbone):
    with pytest.raises(ValueError, match="the history has 54 items, the content 53"):
        ContentRegression(planted.content[:-1], backbone=backbone).fit(planted.history)
    no_warm_content = planted.content * np.isin(np.arange(len(planted.content)), planted.new_items)[:, None]
    with pytest.raises(ValueError, match="no warm item has content"):
        ContentRegression(no_warm_content, backbone=backbone).fit(planted.history)


@pytest.mark.parametrize("n, size, expected", [(10, 4, [4, 4, 2]), (9, 4, [4, 5]), (8, 4, [4, 4]), (3, 8, [3])])
def test_batches_cover_every_row_once_and_never_hold_a_single_row(n, size, expected):
    batches = batch_slices(np.arange(n), size)
    assert [len(b) for b in batches] == expected
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(n))


def test_one_seed_gives_the_same_scores_another_seed_other_ones(planted, backbone):
    def scores(seed: int) -> np.ndarray:
        model = DropoutNet(planted.content, backbone=backbone, epochs=2, batch_size=32, hidden=(8,),
                           options=TrainingOptions(seed=seed))
        return model.fit(planted.history).score_block(np.arange(5))

    np.testing.assert_array_equal(scores(3), scores(3))
    assert not np.allclose(scores(3), scores(4))


def test_early_stopping_keeps_the_best_checked_epoch_and_a_refit_for_it_reproduces_it(planted, backbone):
    checks = iter([0.1, 0.2, 0.5, 0.4, 0.3, 0.2])  # epochs 0, 2, 4, 6, 8, ...: best at epoch 4

    def monitor(model) -> float:
        return next(checks)

    model = ContentRegression(planted.content, backbone=backbone, epochs=20, eval_every=2, patience=2, batch_size=8)
    log = model.fit_monitored(planted.history, monitor)
    assert (log.best_epoch, log.epochs_run, log.stopped_early) == (4, 8, True)
    refit = ContentRegression(planted.content, backbone=backbone, epochs=4, batch_size=8).fit(planted.history)
    np.testing.assert_array_equal(model.score_block(np.arange(10)), refit.score_block(np.arange(10)))


def test_a_shared_backbone_is_fitted_once(planted, monkeypatch):
    backbone = shared_backbone(planted)  # its own: this test moves it to another history
    fits = []
    monkeypatch.setattr(backbone.model, "fit", lambda history: fits.append(history))
    for hidden in [(4,), (8,)]:
        ContentRegression(planted.content, backbone=backbone, hidden=hidden, epochs=1).fit(planted.history)
    assert fits == []  # fitted by the fixture already, on this very history
    ContentRegression(planted.content, backbone=backbone, epochs=1).fit(planted_new_items(seed=1).history)
    assert len(fits) == 1  # another history: refitted
