"""The robustness stage's split of test users by history (vlm4rec/pipeline/robustness.py): the protocols are
compared on users with a history; users without one are counted and described apart."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlm4rec.evaluation import MethodKey, MethodResult
from vlm4rec.pipeline.robustness import cold_start_lists, history_split_metrics


def test_cold_start_lists_names_what_a_method_returns() -> None:
    assert cold_start_lists(np.tile(np.arange(4), (3, 1))) == "one list for all, in item-index order (every score tied)"
    assert cold_start_lists(np.tile([3, 1, 0, 2], (3, 1))) == "one list for all"
    assert cold_start_lists(np.array([[0, 1], [1, 0], [0, 1]])) == "2 distinct lists for 3 users"
    assert cold_start_lists(np.zeros((0, 4), dtype=np.int64)) == "no such users"


def test_history_split_metrics_average_each_group_of_users() -> None:
    per_user = pd.DataFrame({"user_idx": [0, 2, 3, 5], "ndcg@10": [0.2, 0.4, 0.0, 0.1]})
    topk = np.array([[5, 4], [0, 1], [0, 1], [2, 3]])
    result = MethodResult(MethodKey("m"), {}, pd.DataFrame(), per_user, per_user, topk, {}, {})
    with_history = np.array([True, True, False, False, True, True])  # users 2 and 3 have none
    split = history_split_metrics(result, with_history)
    assert split["test_with_history"]["ndcg@10"] == pytest.approx((0.2 + 0.1) / 2)
    assert split["cold_start"]["test"]["ndcg@10"] == pytest.approx(0.2)
    assert split["cold_start"]["lists"] == "one list for all, in item-index order (every score tied)"
