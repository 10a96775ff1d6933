import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vlm4rec.data import PreparedData
from vlm4rec.evaluation import (Candidate, EvalData, MethodKey, MethodResult, evaluate, load_result, per_user_long,
                                rank_and_score, select_and_test, select_and_test_seeds, validation_monitor)
from vlm4rec.metrics import summarize
from vlm4rec.stats import paired_tests
from vlm4rec.matching import IterativeRecommender, ProfileRecommender, TrainingLog
from vlm4rec.splits import History, SplitConfig, assign_split

N_USERS, N_ITEMS, PER_USER = 60, 50, 10


def planted_prepared(seed: int = 0) -> tuple[PreparedData, np.ndarray]:
    """Users of group g interact with items of cluster g (items 0..24 / 25..49), temporal split;
    returns the data and item vectors that carry the clusters."""
    rng = np.random.default_rng(seed)
    cluster = np.repeat([0, 1], N_ITEMS // 2)
    rows = []
    for user in range(N_USERS):
        items = rng.choice(np.flatnonzero(cluster == user % 2), PER_USER, replace=False)
        rows += [(user, int(item), 1000 * user + t, 5.0) for t, item in enumerate(items)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "rating"])
    inter["split"] = assign_split(inter, SplitConfig())
    items = pd.DataFrame({"item_idx": np.arange(N_ITEMS), "item_id": [str(i) for i in range(N_ITEMS)]})
    users = pd.DataFrame({"user_idx": np.arange(N_USERS), "user_id": [str(u) for u in range(N_USERS)]})
    centroids = rng.normal(size=(2, 8))
    vectors = (centroids[cluster] + 0.5 * rng.normal(size=(N_ITEMS, 8))).astype(np.float32)
    return PreparedData(items=items, users=users, interactions=inter), vectors


@pytest.fixture(scope="module")
def planted() -> tuple[EvalData, PreparedData, np.ndarray]:
    prepared, vectors = planted_prepared()
    return EvalData.from_prepared(prepared), prepared, vectors


def shuffled(vectors: np.ndarray) -> np.ndarray:
    return vectors[np.random.default_rng(1).permutation(len(vectors))]


def profile_grid(vectors: np.ndarray) -> list[Candidate]:
    return [Candidate({"vectors": "shuffled"}, lambda: ProfileRecommender(shuffled(vectors))),
            Candidate({"vectors": "signal"}, lambda: ProfileRecommender(vectors))]


def test_eval_data_from_prepared(planted) -> None:
    data, prepared, _ = planted
    inter = prepared.interactions
    counts = inter["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (7 * N_USERS, N_USERS, 2 * N_USERS)
    assert data.train_history.matrix.nnz == counts["train"]
    assert data.trainval_history.matrix.nnz == counts["train"] + counts["val"]
    assert data.val_targets.nnz == counts["val"] and data.test_targets.nnz == counts["test"]
    np.testing.assert_array_equal(data.val_users, np.arange(N_USERS))
    np.testing.assert_array_equal(data.test_users, np.arange(N_USERS))
    train = inter[inter["split"] == "train"]
    np.testing.assert_array_equal(data.item_popularity, np.bincount(train["item_idx"], minlength=N_ITEMS))


def test_evaluate_fills_timing_and_ranks_every_user(planted) -> None:
    data, _, vectors = planted
    split = data.validation()
    timing: dict[str, float] = {}
    topk, per_user = evaluate(ProfileRecommender(vectors), split, (5, 10), timing)
    assert topk.shape == (N_USERS, 10)
    assert list(per_user["user_idx"]) == list(split.users)
    assert set(timing) == {"fit_s", "score_s", "users_per_s"}


def test_planted_signal_beats_shuffled_vectors(planted) -> None:
    data, _, vectors = planted
    signal = select_and_test("signal", lambda: ProfileRecommender(vectors), data, ks=(10,))
    noise = select_and_test("shuffled", lambda: ProfileRecommender(shuffled(vectors)), data, ks=(10,))
    assert signal.test_summary()["ndcg@10"] > noise.test_summary()["ndcg@10"] + 0.2
    assert signal.config == {}


def test_per_user_results_feed_paired_tests(planted) -> None:
    data, _, vectors = planted
    signal = select_and_test("signal", lambda: ProfileRecommender(vectors), data, ks=(10,))
    noise = select_and_test("shuffled", lambda: ProfileRecommender(shuffled(vectors)), data, ks=(10,))
    long = pd.concat([r.test_per_user.assign(method=r.key.family) for r in (signal, noise)])
    table = paired_tests(long, "shuffled", "ndcg@10")
    assert table.loc[0, "method"] == "signal" and table.loc[0, "n_users"] == N_USERS
    assert table.loc[0, "mean_diff"] > 0 and table.loc[0, "p"] < 0.01


def test_selection_picks_best_on_validation_and_first_on_ties(planted) -> None:
    data, _, vectors = planted
    result = select_and_test("profile", profile_grid(vectors), data, ks=(5, 10))
    assert result.config == {"vectors": "signal"}
    assert list(result.val_grid["config"]) == ['{"vectors": "shuffled"}', '{"vectors": "signal"}']
    assert result.val_grid.loc[1, "ndcg@10"] == pytest.approx(result.val_per_user["ndcg@10"].mean())
    twins = [Candidate({"copy": i}, lambda: ProfileRecommender(vectors)) for i in range(2)]
    assert select_and_test("profile", twins, data, ks=(10,)).config == {"copy": 0}


def test_selection_never_reads_test_targets(planted) -> None:
    data, _, vectors = planted
    rng = np.random.default_rng(5)
    fake_dense = (rng.random((N_USERS, N_ITEMS)) < 0.1).astype(np.float32)
    fake_dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = 1.0
    fake_test = sp.csr_matrix(fake_dense)
    scrambled = dataclasses.replace(data, test_targets=fake_test)
    real = select_and_test("profile", profile_grid(vectors), data, ks=(10,))
    fake = select_and_test("profile", profile_grid(vectors), scrambled, ks=(10,))
    assert real.config == fake.config
    metric_columns = [c for c in real.val_grid.columns if not c.endswith("_s")]
    pd.testing.assert_frame_equal(real.val_grid[metric_columns], fake.val_grid[metric_columns])
    pd.testing.assert_frame_equal(real.val_per_user, fake.val_per_user)
    assert not real.test_per_user.equals(fake.test_per_user)


class HistorySpy(ProfileRecommender):
    """A profile model that remembers every history it was fitted on."""

    fitted_on: list[History] = []

    def fit(self, history: History) -> "HistorySpy":
        HistorySpy.fitted_on.append(history)
        return super().fit(history)


def entries(matrix: sp.csr_matrix) -> set[tuple[int, int]]:
    return {(int(u), int(i)) for u, i in zip(*matrix.nonzero())}


def pairs_in(inter: pd.DataFrame, splits: list[str]) -> set[tuple[int, int]]:
    part = inter[inter["split"].isin(splits)]
    return {(int(u), int(i)) for u, i in zip(part["user_idx"], part["item_idx"])}


def test_test_items_never_enter_profiles_and_seen_items_are_excluded(planted) -> None:
    data, prepared, vectors = planted
    HistorySpy.fitted_on = []
    result = select_and_test("spy", lambda: HistorySpy(vectors), data, ks=(10,))
    validation_fit, test_fit = HistorySpy.fitted_on
    inter = prepared.interactions
    assert entries(validation_fit.matrix) == pairs_in(inter, ["train"])
    assert entries(test_fit.matrix) == pairs_in(inter, ["train", "val"])
    recommended = {(u, i) for u, row in zip(data.test_users, result.test_topk) for i in row}
    assert not recommended & pairs_in(inter, ["train", "val"])


def test_save_and_load_round_trip(planted, tmp_path) -> None:
    data, _, vectors = planted
    result = select_and_test("profile", profile_grid(vectors), data, ks=(5, 10), out_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "chosen.json", "val_grid.parquet", "val_per_user.parquet", "test_per_user.parquet",
        "test_topk.npy", "summary.json"}
    loaded = load_result(tmp_path)
    assert (loaded.key, loaded.config, loaded.select_metric) == (MethodKey("profile"), {"vectors": "signal"},
                                                                    "ndcg@10")
    pd.testing.assert_frame_equal(loaded.val_grid, result.val_grid)
    pd.testing.assert_frame_equal(loaded.test_per_user, result.test_per_user)
    np.testing.assert_array_equal(loaded.test_topk, result.test_topk)
    assert loaded.coverage == pytest.approx(result.coverage)
    assert loaded.diagnostics == {"n_empty_profiles": 0, "n_missing_items": 0}
    assert loaded.test_summary() == pytest.approx(result.test_summary())


def test_bad_selection_inputs_fail_before_testing(planted) -> None:
    data, _, vectors = planted
    with pytest.raises(ValueError, match="select_metric"):
        select_and_test("p", lambda: ProfileRecommender(vectors), data, ks=(5,), select_metric="ndcg@10")
    with pytest.raises(TypeError):
        select_and_test("p", [Candidate({"v": vectors}, lambda: ProfileRecommender(vectors))], data)
    with pytest.raises(ValueError, match="no candidate"):
        select_and_test("p", [], data)


class EpochModel(IterativeRecommender):
    """A fake iterative model: after epoch ``good_epoch`` (counted from its seed) it ranks with the signal
    vectors, at every other epoch with shuffled ones; records what it was fitted on."""

    calls: list[tuple[str, int, int, History]] = []

    def __init__(self, vectors: np.ndarray, good_epoch: int, seed: int = 0, epochs: int = 10):
        self.vectors, self.good_epoch, self.seed, self.epochs = vectors, good_epoch, seed, epochs
        self.eval_every, self.patience = 1, 5

    def _at(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner = ProfileRecommender(self.vectors if epoch == self.good_epoch else shuffled(self.vectors))
        self.inner.fit(self.history)

    def fit(self, history: History) -> "EpochModel":
        self.history = history
        EpochModel.calls.append(("fit", self.seed, self.epochs, history))
        self._at(self.epochs)
        return self

    def fit_monitored(self, history: History, monitor) -> TrainingLog:
        self.history = history
        EpochModel.calls.append(("monitored", self.seed, self.epochs, history))
        log = TrainingLog()
        for epoch in range(self.epochs + 1):
            self._at(epoch)
            if epoch:
                log.train_loss.append(1.0 / epoch)
            log.curve.append((epoch, monitor(self)))
            best = max(log.curve, key=lambda point: point[1])[0]
            if epoch - best >= self.patience:
                break
        log.best_epoch = max(log.curve, key=lambda point: point[1])[0]
        self._at(log.best_epoch)
        return log

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return self.inner.score_block(users)


def test_iterative_models_are_early_stopped_on_validation_and_refitted_for_the_chosen_epochs(planted):
    data, prepared, vectors = planted
    EpochModel.calls = []
    result = select_and_test("epochs", [Candidate({"good": 3}, lambda: EpochModel(vectors, 3))], data, ks=(10,))
    assert result.config == {"good": 3, "epochs": 3}
    assert result.training["best_epoch"] == 3 and result.training["epochs_run"] == 8  # patience 5 after 3
    assert [e for e, _ in result.training["curve"]] == list(range(9))
    (kind_val, _, _, val_history), (kind_test, _, epochs, test_history) = EpochModel.calls
    assert (kind_val, kind_test, epochs) == ("monitored", "fit", 3)
    assert entries(val_history.matrix) == pairs_in(prepared.interactions, ["train"])
    assert entries(test_history.matrix) == pairs_in(prepared.interactions, ["train", "val"])
    assert result.val_summary()["ndcg@10"] == pytest.approx(max(v for _, v in result.training["curve"]))


def test_seeded_methods_select_on_the_first_seed_and_test_every_seed(planted, tmp_path):
    data, _, vectors = planted
    EpochModel.calls = []

    def grid(seed: int) -> list[Candidate]:
        return [Candidate({"good": g}, lambda g=g: EpochModel(vectors, g, seed=seed)) for g in (2, 4)]

    results = select_and_test_seeds("epochs", grid, data, seeds=[5, 6], ks=(10,), out_dir=tmp_path)
    assert list(results) == [MethodKey("epochs", 5), MethodKey("epochs", 6)]
    assert [r.key for r in results.values()] == list(results)
    assert [(kind, seed) for kind, seed, _, _ in EpochModel.calls] == [
        ("monitored", 5), ("monitored", 5), ("fit", 5), ("fit", 6)]
    assert all(r.config == {"good": 2, "epochs": 2} for r in results.values())  # first of the tie
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs@seed5", "epochs@seed6"]
    loaded = load_result(tmp_path / "epochs@seed6")
    assert loaded.key == MethodKey("epochs", 6) and loaded.training == results[MethodKey("epochs", 6)].training
    with pytest.raises(ValueError, match="no seeds"):
        select_and_test_seeds("epochs", grid, data, seeds=[], ks=(10,))


def test_without_refit_each_seed_is_tested_at_its_own_best_validation_checkpoint(planted, tmp_path):
    """MMRec's protocol: no fit on train + validation; the first seed's test model is the selection run
    itself, every other seed gets one train-only run early-stopped on validation, and the test ranking
    still leaves out each user's train + validation items."""
    data, prepared, vectors = planted
    EpochModel.calls = []

    def grid(seed: int) -> list[Candidate]:
        return [Candidate({"good": g}, lambda g=g: EpochModel(vectors, g, seed=seed)) for g in (2, 4)]

    results = select_and_test_seeds("epochs", grid, data, seeds=[5, 6], ks=(10,), out_dir=tmp_path, refit=False)
    assert [(kind, seed) for kind, seed, _, _ in EpochModel.calls] == [
        ("monitored", 5), ("monitored", 5), ("monitored", 6)]
    assert all(entries(h.matrix) == pairs_in(prepared.interactions, ["train"]) for *_, h in EpochModel.calls)
    assert all(r.config == {"good": 2, "epochs": 2} for r in results.values())
    test = data.test()
    for result in results.values():
        model = EpochModel(vectors, 2)
        model.history = data.train_history
        model._at(2)
        topk, per_user = rank_and_score(model, test, (10,))
        np.testing.assert_array_equal(result.test_topk, topk)
        pd.testing.assert_frame_equal(result.test_per_user, per_user)
        seen = test.exclude[test.users]
        assert not any(seen[row, item] for row, items in enumerate(result.test_topk) for item in items)


@pytest.mark.parametrize("key, name", [(MethodKey("fusion_gating", 1), "fusion_gating@seed1"),
                                       (MethodKey("vbpr-title-image", 0), "vbpr-title-image@seed0"),
                                       (MethodKey("ease"), "ease"), (MethodKey("title_meta", None), "title_meta")])
def test_a_method_key_is_named_as_its_result_folder_and_read_back(key: MethodKey, name: str) -> None:
    assert key.name == str(key) == name and MethodKey.parse(name) == key


def test_a_method_name_holding_the_seed_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="reserve for the seed"):
        MethodKey("fusion@seed1")


def test_per_user_long_stacks_results_by_family_and_seed() -> None:
    def result(key: MethodKey, values: list[float]) -> MethodResult:
        per_user = pd.DataFrame({"user_idx": [3, 7], "ndcg@10": values})
        return MethodResult(key, {}, pd.DataFrame(), per_user, per_user, np.zeros((2, 1), dtype=np.int64), {}, {})

    keys = [MethodKey("title"), MethodKey("fusion", 2)]
    long = per_user_long({key: result(key, [0.5, 0.25 * i]) for i, key in enumerate(keys)})
    assert long["method"].tolist() == ["title", "title", "fusion", "fusion"]
    assert long["seed"].tolist()[2:] == [2.0, 2.0] and long["seed"].isna().tolist()[:2] == [True, True]
    assert long["ndcg@10"].tolist() == [0.5, 0.0, 0.5, 0.25]


def test_a_grid_without_any_finite_validation_metric_is_an_error(planted):
    data, _, vectors = planted
    no_validation = dataclasses.replace(data, val_targets=sp.csr_matrix(data.val_targets.shape))
    with pytest.raises(ValueError, match="no candidate reached a finite validation ndcg@10"):
        select_and_test("p", profile_grid(vectors), no_validation, ks=(10,))


def test_result_files_hold_no_wall_times_and_are_identical_across_runs(planted, tmp_path):
    data, _, vectors = planted
    for run in ("a", "b"):
        select_and_test("profile", profile_grid(vectors), data, ks=(5, 10), out_dir=tmp_path / run)
    for name in ("chosen.json", "val_grid.parquet", "val_per_user.parquet", "test_per_user.parquet",
                 "test_topk.npy", "summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "_s" not in (tmp_path / "a" / "summary.json").read_text()


@pytest.mark.parametrize("select_metric", ["ndcg@10", "recall@5", "mrr@20"])
def test_the_monitor_ranking_to_its_own_cutoff_gives_the_selections_value_exactly(planted, select_metric):
    """Early stopping ranks only to the metric's cut-off; on tied vectors (many exact and near ties) its value
    is the one the selection computes from the full lists, to the last bit."""
    data, _, vectors = planted
    tied = np.round(vectors, 1)  # repeated coordinates: exact ties between items
    model = ProfileRecommender(tied).fit(data.validation().history)
    split = data.validation()
    full = summarize(rank_and_score(model, split, [5, 10, 20, 50])[1])[select_metric]
    assert validation_monitor(split, [5, 10, 20, 50], select_metric)(model) == full
    with pytest.raises(ValueError, match="cut-off"):
        validation_monitor(split, [5, 20], "ndcg@10")
