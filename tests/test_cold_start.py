"""New items under the strict cold-start split: content methods can rank an item no one has interacted with,
and only content that carries the signal ranks it well (planted fixtures, hand-checked expectations)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vlm4rec.cold_start import (FittedOnce, NewItemData, exclusion_outside, new_item_counts, new_item_findings,
                                new_item_findings_display,
                                select_and_test_new_items)
from vlm4rec.config import load_params
from vlm4rec.evaluation import Candidate, ChanceReference, MethodKey, MethodResult, evaluate
from vlm4rec.metrics import CHANCE
from vlm4rec.matching import ProfileRecommender, recommend
from vlm4rec.metrics import chance_metrics, ranking_metrics
from vlm4rec.multimodal import candidates as graph_candidates
from vlm4rec.multimodal.freedom import FREEDOM
from vlm4rec.multimodal.vbpr import VBPR
from vlm4rec.splits import assign_new_item_split, build_history, new_items, targets_of
from vlm4rec.stats import TWO_WAY_RESAMPLING, bootstrap_p, percentile_interval, two_way_replicates


def test_a_new_item_matching_a_users_history_reaches_the_top_k():
    # Items 0-1 (the user's history) and 4 (never interacted with) point along axis 0; items 2-3 along axis 1.
    vectors = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 0.05]], dtype=np.float32)
    inter = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 2], "timestamp": [1, 2, 3], "split": "train"})
    history = build_history(inter, ("train",), n_users=2, n_items=5)
    model = ProfileRecommender(vectors).fit(history)
    assert recommend(model, np.array([0]), history.matrix, k=1).tolist() == [[4]]


def planted(n_users: int = 60, n_genres: int = 3, per_genre: int = 20,
            seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Each user likes one genre and interacts with 8 of its items; item vectors are the genre axis plus
    small noise. Item ``i`` is of genre ``i % n_genres``; its first interaction time grows with ``i``."""
    rng = np.random.default_rng(seed)
    n_items = n_genres * per_genre
    genre = np.arange(n_items) % n_genres
    rows = []
    for user in range(n_users):
        liked = rng.choice(np.flatnonzero(genre == user % n_genres), size=8, replace=False)
        rows += [(user, int(item), int(item) * 10 + user % 7) for item in liked]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    vectors = np.eye(n_genres, dtype=np.float32)[genre] + 0.05 * rng.standard_normal((n_items, n_genres))
    return inter, vectors.astype(np.float32)


def cold_recall(inter: pd.DataFrame, vectors: np.ndarray, k: int, among_cold: bool) -> float:
    """Mean per-user recall@k over the test cold items, ranked among all items or among the test cold
    items only (train history excluded)."""
    val, test = new_items(inter, cold_share=0.3, val_share=0.5)
    inter = inter.assign(split=assign_new_item_split(inter, val, test))
    n_users, n_items = int(inter["user_idx"].max()) + 1, len(vectors)
    history = build_history(inter, ("train",), n_users, n_items)
    targets = targets_of(inter, "test", n_users, n_items)
    users = np.flatnonzero(np.diff(targets.indptr))
    exclude = exclusion_outside(history.matrix, test if among_cold else None)
    topk = recommend(ProfileRecommender(vectors).fit(history), users, exclude, k)
    hits = [np.isin(targets[u].indices, row).sum() / targets[u].nnz for u, row in zip(users, topk)]
    return float(np.mean(hits))


def test_content_with_the_signal_wins_on_new_items_and_shuffled_content_does_not():
    inter, vectors = planted()
    shuffled = vectors[np.random.default_rng(1).permutation(len(vectors))]
    # 9 test cold items (51..59), 3 per genre: among them, a user's own genre fills its top-3, so recall is 1
    assert cold_recall(inter, vectors, k=3, among_cold=True) == 1.0
    assert cold_recall(inter, shuffled, k=3, among_cold=True) < 0.6
    # among all items, the unseen warm items of the user's genre compete, but the signal still wins
    among_all = [cold_recall(inter, v, k=10, among_cold=False) for v in (vectors, shuffled)]
    assert among_all[0] > 2 * among_all[1]


def test_exclusion_outside_masks_seen_items_and_non_candidates():
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    assert exclusion_outside(seen, None).toarray().tolist() == seen.toarray().tolist()
    assert exclusion_outside(seen, np.array([0, 2])).toarray().tolist() == [[1, 1, 0, 1], [0, 1, 0, 1]]
    assert exclusion_outside(seen, np.array([0, 2]), users=np.array([1])).toarray().tolist() == [[1, 0, 0, 0],
                                                                                                  [0, 1, 0, 1]]


def test_new_item_splits_fit_on_warm_items_only_and_rank_the_phase_candidates():
    inter, vectors = planted()
    val, test = new_items(inter, cold_share=0.3, val_share=0.5)
    inter = inter.assign(split=assign_new_item_split(inter, val, test))
    n_users, n_items = int(inter["user_idx"].max()) + 1, len(vectors)
    for among_cold in (False, True):
        data = NewItemData.from_new_item_split(inter, n_users, n_items, val, test, "cold" if among_cold else "all")
        val_split, test_split = data.validation(), data.test()
        assert not val_split.history.matrix[:, np.concatenate([val, test])].nnz
        _, per_user = evaluate(ProfileRecommender(vectors), test_split, ks=[3, 10])
        k = 3 if among_cold else 10
        assert per_user[f"recall@{k}"].mean() == pytest.approx(cold_recall(inter, vectors, k, among_cold))


def test_the_four_settings_rank_their_candidates_against_their_targets():
    """Items 0-1 warm, 2 a validation new item, 3 a test new item; user 0 has a warm test positive on item 1."""
    rows = [(0, 0, 0, "train"), (1, 0, 1, "train"), (1, 1, 2, "train"), (0, 1, 3, "warm_test"),
            (0, 2, 4, "val"), (0, 3, 5, "test"), (1, 3, 6, "test")]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "split"])
    data = NewItemData.from_new_item_split(inter, 2, 4, np.array([2]), np.array([3]), "cold")
    assert data.train_history.matrix.toarray().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]
    assert data.warm_items.tolist() == [0, 1]
    expected = {  # setting: (users, targets of user 0, the items user 0 cannot be recommended)
        "all": ([0, 1], [3], [0]), "cold": ([0, 1], [3], [0, 1, 2]), "warm": ([0], [1], [0, 2, 3]),
        "hybrid": ([0, 1], [1, 3], [0])}
    for name, (users, targets, excluded) in expected.items():
        split = data.with_candidates(name).test()
        assert split.users.tolist() == users, name
        assert split.targets[0].indices.tolist() == targets, name
        assert np.flatnonzero(split.exclude[0].toarray()).tolist() == excluded, name
    assert np.flatnonzero(data.validation().exclude[0].toarray()).tolist() == [0, 1, 3]  # among validation new items
    with pytest.raises(ValueError, match="unknown candidate set"):
        data.with_candidates("new")


def test_the_cold_start_params_are_the_keywords_of_new_items():
    inter, _ = planted()
    params = load_params("params.yaml").cold_start.model_dump()
    val, test = new_items(inter, **{key: params[key] for key in ("variant", "cold_share", "val_share", "seed")})
    assert len(val) + len(test) == round(params["cold_share"] * inter["item_idx"].nunique())


def ranked(key: MethodKey, topk: np.ndarray, targets: sp.csr_matrix) -> MethodResult:
    """A new-item result from hand-made top-3 lists over the users 0..len(topk) - 1."""
    users = np.arange(len(topk))
    per_user = ranking_metrics(topk, targets, users, [3])
    return MethodResult(key, {}, pd.DataFrame(), per_user, per_user, topk, {}, {})


def new_item_case() -> tuple[sp.csr_matrix, dict[MethodKey, MethodResult]]:
    """12 users, 6 new items; user u's targets are items u % 6 and (u + 1) % 6. The description lists both
    targets first (recall 1), the title lists one of them for even users (0.5) and none for odd ones (0), the
    image lists the same as the description, vbpr has one seed."""
    n = 12
    targets = sp.csr_matrix((np.ones(2 * n), (np.repeat(np.arange(n), 2),
                                               np.ravel([[u % 6, (u + 1) % 6] for u in range(n)]))), shape=(n, 6))
    description = np.array([[u % 6, (u + 1) % 6, (u + 2) % 6] for u in range(n)])
    title = np.array([[u % 6, (u + 2) % 6, (u + 3) % 6] if u % 2 == 0 else [(u + 2) % 6, (u + 3) % 6, (u + 4) % 6]
                      for u in range(n)])
    results = {MethodKey("description"): ranked(MethodKey("description"), description, targets),
               MethodKey("title"): ranked(MethodKey("title"), title, targets),
               MethodKey("image"): ranked(MethodKey("image"), description.copy(), targets),
               MethodKey("vbpr", 0): ranked(MethodKey("vbpr", 0), title, targets)}
    return targets, results


def test_new_item_findings_resample_users_and_items_against_each_method_and_chance():
    targets, results = new_item_case()
    chance_test = chance_metrics(np.full(12, 6), np.full(12, 2), np.arange(12), [3])  # recall@3 = 3 / 6
    chance = ChanceReference(chance_test, chance_test)
    table = new_item_findings(results, targets, "description", "recall@3", chance, n_resamples=400, seed=1)
    assert table["reference"].tolist() == ["title", "image", "vbpr", CHANCE]
    assert (table["method"] == "description").all() and (table["resampling"] == TWO_WAY_RESAMPLING).all()
    rows = table.set_index("reference")
    assert rows.loc["title", "mean_diff"] == pytest.approx(1 - 0.25)  # title: 0.5 on even users, 0 on odd
    assert rows.loc[CHANCE, "mean_reference"] == pytest.approx(0.5)
    assert rows.loc["image", "verdict_blocked_by"] == "identical per-user values"
    assert rows.loc["vbpr", "verdict_blocked_by"] == "one seed" and np.isnan(rows.loc["vbpr", "p"])
    # the title's CI and p come from the two-way replicates of the per-pair hits
    pair_users = np.repeat(np.arange(12), 2)
    pair_items = np.ravel([sorted([u % 6, (u + 1) % 6]) for u in range(12)])
    mine = np.ones(24)
    theirs = np.array([1.0 if (u % 2 == 0 and i == u % 6) else 0.0 for u, i in zip(pair_users, pair_items)])
    arms = two_way_replicates(pair_users, pair_items, [mine, theirs], 400, seed=1)
    assert (rows.loc["title", "diff_ci_low"], rows.loc["title", "diff_ci_high"]) == \
        pytest.approx(percentile_interval(arms[0] - arms[1]))
    assert rows.loc["title", "p"] == pytest.approx(bootstrap_p(arms[0] - arms[1]))
    assert rows.loc["title", "diff_ci_low_users"] <= rows.loc["title", "diff_ci_high_users"]
    with pytest.raises(ValueError, match="recall@K"):
        new_item_findings(results, targets, "description", "ndcg@3")


def test_the_protocol_counts_and_a_profile_ranks_the_new_items_by_their_content():
    inter, vectors = planted()
    val, test = new_items(inter, cold_share=0.3, val_share=0.5)
    inter = inter.assign(split=assign_new_item_split(inter, val, test))
    counts = new_item_counts(inter, val, test)
    assert counts["val_cold_items"] == counts["test_cold_items"] == 9
    assert counts["test_pairs"] == int(inter["item_idx"].isin(test).sum())
    pairs = inter.loc[inter["item_idx"].isin(test), "item_idx"].value_counts().to_numpy()
    assert counts["test_pairs_per_item"] == round(pairs.sum() / 9, 1)
    assert counts["test_pairs_on_top5_items"] == round(np.sort(pairs)[-5:].sum() / pairs.sum(), 3)
    shuffled = vectors[np.random.default_rng(1).permutation(len(vectors))]
    split = NewItemData.from_new_item_split(inter, 60, 60, val, test, "cold").test()
    means = {name: evaluate(ProfileRecommender(x), split, [3, 10])[1]["recall@3"].mean()
             for name, x in (("signal", vectors), ("shuffled", shuffled))}
    assert len(split.users) == counts["test_users"]
    assert means["signal"] == cold_recall(inter, vectors, 3, among_cold=True) == 1.0
    assert means["shuffled"] == pytest.approx(cold_recall(inter, shuffled, 3, among_cold=True))


def planted_data(among_cold: bool = False) -> tuple[NewItemData, np.ndarray]:
    inter, vectors = planted()
    val, test = new_items(inter, cold_share=0.3, val_share=0.5)
    inter = inter.assign(split=assign_new_item_split(inter, val, test))
    return NewItemData.from_new_item_split(inter, 60, len(vectors), val, test, "cold" if among_cold else "all"), vectors


def cold_recall_of(results: dict, method: str, candidates: str, k: int) -> float:
    return float(np.mean([r.test_per_user[f"recall@{k}"].mean() for key, r in results[candidates].items()
                          if key.family == method]))


def test_the_stage_path_ranks_new_items_by_profile_and_by_vbprs_and_freedoms_content_form():
    data, vectors = planted_data()
    shuffled = vectors[np.random.default_rng(1).permutation(len(vectors))]
    recalls = {}
    for label, content in (("signal", vectors), ("shuffled", shuffled)):
        profile = select_and_test_new_items(
            "profile", lambda seed, c=content: [Candidate({}, lambda: ProfileRecommender(c))], data, [3, 10], "ndcg@10")
        # the profile's test lists are exactly the hand-built ranking's
        assert cold_recall_of(profile, "profile", "cold", 3) == pytest.approx(
            cold_recall(planted()[0], content, 3, among_cold=True))
        for model in ("vbpr", "freedom"):
            options = {"dim": 16, "epochs": 40, "batch_size": 128, "eval_every": 10, "patience": 2, "lr": 0.05,
                       "unseen_items": "content"} | ({"knn_k": 5} if model == "freedom" else {})
            graph = select_and_test_new_items(
                model, lambda seed, c=content, o=options, m=model: graph_candidates(m, {"text": c}, {}, o, seed),
                data, [3, 10], "ndcg@10", seeds=[0])
            recalls[label, model] = cold_recall_of(graph, model, "cold", 3)
    for model in ("vbpr", "freedom"):
        assert recalls["signal", model] > 0.9 and recalls["shuffled", model] < 0.6, recalls


def test_a_new_item_has_no_id_parameters_in_the_content_form():
    data, vectors = planted_data()
    new = np.concatenate([data.val_items, data.test_items])
    model = VBPR({"text": vectors}, dim=8, epochs=3, batch_size=64, unseen_items="content").fit(data.train_history)
    assert not model.model.item_factors[new].any() and not model.model.item_bias[new].any()
    assert model.model.item_factors[np.setdiff1d(np.arange(len(vectors)), new)].abs().sum() > 0
    freedom = FREEDOM({"text": vectors}, dim=8, epochs=3, batch_size=64, knn_k=5, unseen_items="content")
    freedom.fit(data.train_history)
    assert not freedom.model.ego[60 + new].any()
    # its score still comes through the content graph: a new item's vector is not zero
    assert np.abs(freedom.item_factors[new]).sum(axis=1).min() > 0


def test_fitted_once_refits_only_on_another_history():
    class Counting(ProfileRecommender):
        fits = 0

        def fit(self, history):
            Counting.fits += 1
            return super().fit(history)

    data, vectors = planted_data()
    shared = FittedOnce(Counting(vectors))
    for _ in range(3):
        shared.fit(data.train_history)
    assert Counting.fits == 1
    other = build_history(pd.DataFrame({"user_idx": [0], "item_idx": [0], "timestamp": [0], "split": "train"}),
                          ("train",), 60, len(vectors))
    shared.fit(other)
    assert Counting.fits == 2 and shared.score_block(np.array([0])).argmax() % 3 == 0


def test_the_new_item_findings_display_reads_the_metrics_records() -> None:
    record = {"method": "description", "reference": "title", "metric": "recall@20", "mean_diff": 0.0125,
              "diff_ci_low": -0.5, "diff_ci_high": 0.25, "diff_ci_low_users": -0.25, "diff_ci_high_users": 0.125,
              "verdict_blocked_by": "", "p": 0.5, "p_at_floor": False}
    shown = new_item_findings_display({"cold": [record, record | {"verdict_blocked_by": "one seed"}]})
    assert shown["difference [95% CI, users x items x seeds]"].tolist() == ["+0.0125 [-0.5000, +0.2500]"] * 2
    assert shown["[95% CI, users x seeds]"].tolist() == ["[-0.2500, +0.1250]"] * 2
    assert shown["p (exploratory, unadjusted)"].tolist() == ["0.500", "not tested: one seed"]
    assert shown["candidates"].tolist() == ["cold", "cold"]


