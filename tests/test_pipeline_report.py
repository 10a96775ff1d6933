"""The report's findings (vlm4rec/pipeline/report.py): paired comparisons answered in words, choices made
on validation, Holm across the findings, caveats from the stage outputs."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from vlm4rec.data import PreparedData
from vlm4rec.evaluation import MethodResult
from vlm4rec.metrics import ranking_metrics
from vlm4rec.pipeline import report
from vlm4rec.splits import targets_of

N_USERS, N_ITEMS = 40, 30
REPORT = {"findings": {"metric": "ndcg@10", "description": "description", "title": "title", "image": "image",
                       "slice_k": 10, "short_history": 3}}
EVAL = {"bootstrap_resamples": 200, "seed": 0, "select_metric": "ndcg@10"}


def prepared() -> PreparedData:
    """User u has 2 + u % 5 train items, one test item; items >= 25 are never in train (cold)."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(N_USERS):
        train = rng.choice(25, size=2 + user % 5, replace=False)
        rows += [(user, int(i), t, "train") for t, i in enumerate(train)]
        rows.append((user, int(25 + user % 5) if user % 2 else int(rng.integers(0, 25)), 99, "test"))
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "split"]).assign(rating=5.0)
    items = pd.DataFrame({"item_idx": np.arange(N_ITEMS), "item_id": [str(i) for i in range(N_ITEMS)],
                          "has_image": True})
    users = pd.DataFrame({"user_idx": np.arange(N_USERS), "user_id": [str(u) for u in range(N_USERS)]})
    return PreparedData(items=items, users=users, interactions=inter)


def method(name: str, data: PreparedData, hit_share: float, val: float, seed: int) -> MethodResult:
    """A method that ranks each user's test item first for a share of the users, else last."""
    rng = np.random.default_rng(seed)
    test = data.interactions[data.interactions["split"] == "test"].set_index("user_idx")["item_idx"]
    topk = np.zeros((N_USERS, 10), dtype=np.int64)
    for user in range(N_USERS):
        others = [i for i in range(N_ITEMS) if i != test[user]]
        ranked = rng.permutation(others)[:10]
        if rng.random() < hit_share:
            ranked[0] = test[user]
        topk[user] = ranked
    users = np.arange(N_USERS)
    per_user = ranking_metrics(topk, targets_of(data.interactions, "test", N_USERS, N_ITEMS), users, [10])
    val_per_user = pd.DataFrame({"user_idx": users, "ndcg@10": np.full(N_USERS, val)})
    return MethodResult(name, {}, pd.DataFrame(), val_per_user, per_user, topk, {"coverage@10": 1.0}, {})


@pytest.fixture(scope="module")
def setup() -> tuple[dict[str, MethodResult], PreparedData]:
    data = prepared()
    results = {"title": method("title", data, 0.2, 0.10, 1), "image": method("image", data, 0.2, 0.05, 2),
               "description": method("description", data, 0.9, 0.20, 3),
               # validation prefers fusion_a although fusion_b is better on test: the finding must use fusion_a
               "fusion_a@seed0": method("fusion_a@seed0", data, 0.3, 0.50, 4),
               "fusion_a@seed1": method("fusion_a@seed1", data, 0.3, 0.50, 5),
               "fusion_b": method("fusion_b", data, 0.95, 0.40, 6)}
    return results, data


def test_findings_answer_each_question_with_choices_made_on_validation(setup) -> None:
    results, data = setup
    found = {f.id: f for f in report.findings(results, EVAL, REPORT, ["title", "image", "description"], data)}
    assert set(found) == {"description_vs_image", "description_vs_title", "fusion_vs_best_single",
                          "description_vs_title_cold_items", "description_vs_title_short_histories",
                          "description_vs_image_cold_items", "description_vs_image_short_histories"}
    assert (found["fusion_vs_best_single"].method, found["fusion_vs_best_single"].against) == ("fusion_a", "description")
    assert found["description_vs_title"].answer.startswith("yes: description - title = +")
    assert found["fusion_vs_best_single"].answer.startswith("no, it is worse")
    cold = found["description_vs_title_cold_items"]
    assert cold.n_users == N_USERS // 2 and cold.metric == "recall@10"  # odd users have a cold test item
    assert found["description_vs_title_short_histories"].n_users == 16  # 2 or 3 train items: u % 5 in {0, 1}
    p = [f.wilcoxon_p for f in found.values()]
    assert sorted(f.p_holm for f in found.values()) == pytest.approx(sorted(report.holm(p)))


def test_an_unclear_difference_is_said_so() -> None:
    finding = report.Finding("x", "q?", "a", "b", "ndcg@10", "all", 10, 0.01, -0.02, 0.04, 0.01, 0.2)
    assert finding.answer.startswith("no clear difference: a - b = +0.0100 ndcg@10 [95% CI -0.0200, +0.0400]")


def test_caveats_name_the_grounder_the_split_and_the_robustness_check() -> None:
    grounding = {"grounder": {"backend": "tagger", "description_of_method": "tagger (not an LVLM)"},
                 "arms": {"image_only": {"ok": 90, "items": 100, "title_mention_rate": 0.05}}}
    robustness = pd.DataFrame({"study_split": [0.3, 0.2, 0.1], "global_time": [0.2, 0.25, 0.05]})
    notes = report.caveats(grounding, "temporal_ratio", robustness)
    assert notes[0] == "Every description comes from: tagger (not an LVLM)."
    assert any("not a vision-language model" in n for n in notes)
    assert any("90 of 100 items described; 5.0%" in n for n in notes)
    assert any("Kendall's tau between the two protocols' orderings of 3 methods: 0.33" in n for n in notes)
    assert not any("global time cut" in n for n in report.caveats(grounding, "global_time", None))
    assert not any("epoch cap" in n for n in notes)


def test_runs_that_reached_their_epoch_cap_are_named_in_a_caveat(setup) -> None:
    results, _ = setup
    curve = {"curve": [[0, 0.1], [4, 0.2]], "train_loss": [1.0] * 4, "best_epoch": 4, "epochs_run": 4}
    graph = {"lightgcn@seed0": replace(results["title"], training=curve | {"stopped_early": False}),
             "lightgcn@seed1": replace(results["title"], training=curve | {"stopped_early": False}),
             "vbpr-title-image@seed0": replace(results["title"], training=curve | {"stopped_early": True})}
    fusion = {"a": {"kind": "gating", "seed": 2, "config": {"temperature": 0.1}, "stopped_early": False},
              "b": {"kind": "attention", "seed": 0, "config": {"temperature": 0.1}, "stopped_early": True}}
    capped = report.runs_at_epoch_cap(results | graph, fusion)
    assert capped == ["lightgcn", 'fusion_gating seed 2 {"temperature": 0.1}']
    grounding = {"grounder": {"backend": "hf", "description_of_method": "an LVLM"}, "arms": {}}
    note = report.caveats(grounding, "global_time", None, capped)[-1]
    assert note.startswith("2 training run(s) reached their epoch cap") and "lightgcn; fusion_gating seed 2" in note


def test_a_slice_without_users_leaves_its_finding_out(setup) -> None:
    results, data = setup
    tight = {"findings": REPORT["findings"] | {"short_history": 1}}  # every user has at least 2 history items
    found = {f.id for f in report.findings(results, EVAL, tight, ["title", "image", "description"], data)}
    assert "description_vs_title_short_histories" not in found and "description_vs_title_cold_items" in found
