"""The one path from a model to numbers: fit, recommend, score; select on validation, test once.

Protocol (docs/protocol.md): every candidate configuration is fitted on the train history and
ranked on validation (train items excluded); the best one by ``select_metric`` (first on ties) is
refitted on train + validation and evaluated on test (train + validation items excluded) exactly once.

Leakage is ruled out by structure: selection receives an :class:`EvalSplit` from
:meth:`EvalData.validation`, which holds no test data, and :meth:`EvalData.test` (the only reader of
``test_targets``) is called only by :func:`select_and_test_on` (the one select-then-test of the main,
robustness and new-item paths), after the choice is made.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vlm4rec.data import PreparedData
from vlm4rec.matching import IterativeRecommender, Ranker, Recommender, TrainingLog, recommend
from vlm4rec.metrics import catalogue_coverage, chance_metrics, ranking_metrics, summarize
from vlm4rec.splits import History, build_history, targets_of
from vlm4rec.stage_outputs import read_output

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)


@dataclass(frozen=True)
class EvalSplit:
    """Everything one evaluation phase may see: the history to fit on, the items to exclude, the
    relevant items and the users that have some, and how to rank (every :data:`~vlm4rec.matching.Ranker`
    gives the same lists on the CPU; see :func:`~vlm4rec.matching.recommend_torch` for a GPU)."""

    history: History
    exclude: sp.csr_matrix
    targets: sp.csr_matrix
    users: np.ndarray
    rank: Ranker = recommend


def users_with_targets(targets: sp.csr_matrix) -> np.ndarray:
    """Indices of the users with at least one relevant item."""
    return np.flatnonzero(np.diff(targets.indptr)).astype(np.int64)


@dataclass(frozen=True)
class EvalData:
    """Histories and targets of one prepared dataset, as the evaluation reads them."""

    n_users: int
    n_items: int
    train_history: History
    trainval_history: History
    val_targets: sp.csr_matrix
    test_targets: sp.csr_matrix
    item_popularity: np.ndarray  # train interactions per item
    rank: Ranker = recommend       # how top-K lists are computed (blocked numpy engine by default)

    @classmethod
    def from_prepared(cls, data: PreparedData, rank: Ranker = recommend) -> "EvalData":
        return cls.from_interactions(data.interactions, data.n_users, data.n_items, rank)

    @classmethod
    def from_interactions(cls, inter: pd.DataFrame, n_users: int, n_items: int,
                          rank: Ranker = recommend) -> "EvalData":
        """From interactions labelled train / val / test (e.g. re-split under another protocol)."""
        train = build_history(inter, ("train",), n_users, n_items)
        return cls(n_users=n_users, n_items=n_items, train_history=train,
                   trainval_history=build_history(inter, ("train", "val"), n_users, n_items),
                   val_targets=targets_of(inter, "val", n_users, n_items),
                   test_targets=targets_of(inter, "test", n_users, n_items),
                   item_popularity=np.asarray(train.matrix.sum(axis=0)).ravel().astype(np.int64),
                   rank=rank)

    @property
    def val_users(self) -> np.ndarray:
        return users_with_targets(self.val_targets)

    @property
    def test_users(self) -> np.ndarray:
        return users_with_targets(self.test_targets)

    def validation(self) -> EvalSplit:
        """Fit on train, exclude train items, rank against validation targets."""
        return EvalSplit(self.train_history, self.train_history.matrix, self.val_targets, self.val_users,
                         self.rank)

    def test(self) -> EvalSplit:
        """Fit on train + validation, exclude both, rank against test targets (select_and_test only)."""
        return EvalSplit(self.trainval_history, self.trainval_history.matrix, self.test_targets,
                         self.test_users, self.rank)


@dataclass(frozen=True)
class Candidate:
    """One configuration of a method: its hyperparameters (JSON-able) and how to build it fresh."""

    config: dict[str, Any]
    build: Callable[[], Recommender]


@dataclass(frozen=True)
class MethodKey:
    """Which method a result belongs to: its ``family`` (what tables and tests group by) and, for a seeded
    method, the training ``seed`` (None otherwise).

    :attr:`name` is the key's one serialisation (``fusion_gating@seed0``, ``ease``): result folders and
    metrics JSON are keyed by it; :meth:`parse` is its inverse, for names read back from disk."""

    family: str
    seed: int | None = None

    def __post_init__(self) -> None:
        if "@" in self.family:
            raise ValueError(f"method name {self.family!r} holds '@', which result names reserve for the seed")

    @property
    def name(self) -> str:
        return self.family if self.seed is None else f"{self.family}@seed{self.seed}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> "MethodKey":
        """The key whose :attr:`name` is ``name``."""
        family, tagged, seed = name.partition("@seed")
        return cls(family, int(seed) if tagged else None)


@dataclass
class MethodResult:
    """What a method's selection and single test evaluation produced.

    Everything but ``timing`` is saved by :func:`save_result`; wall times go to the stage's metrics (cost),
    never into result files, so that a rerun writes byte-identical results."""

    key: MethodKey
    config: dict[str, Any]
    val_grid: pd.DataFrame        # one row per candidate: candidate, config (JSON), macro validation metrics
    val_per_user: pd.DataFrame    # chosen configuration on validation
    test_per_user: pd.DataFrame
    test_topk: np.ndarray
    coverage: dict[str, float]    # catalogue_coverage@k on test
    timing: dict[str, float]      # val_s (whole selection), fit_s, score_s, users_per_s (test phase)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    select_metric: str = "ndcg@10"
    training: dict[str, Any] | None = None  # TrainingLog.as_dict() of the chosen candidate (iterative models)

    def test_summary(self) -> dict[str, float]:
        return summarize(self.test_per_user)

    def val_summary(self) -> dict[str, float]:
        return summarize(self.val_per_user)


def chance_per_user(split: EvalSplit, ks: Sequence[int]) -> pd.DataFrame:
    """Per-user metrics of a uniformly random ranking of what ``split`` ranks (every item not excluded for the
    user), in expectation (:func:`~vlm4rec.metrics.chance_metrics`), for the split's users."""
    users = split.users
    excluded = np.asarray((split.exclude[users] > 0).sum(axis=1)).ravel()
    return chance_metrics(split.exclude.shape[1] - excluded, np.diff(split.targets.indptr)[users], users, ks)


@dataclass(frozen=True)
class ChanceReference:
    """Chance on one protocol: the expected per-user metrics of a uniformly random ranking over the same
    candidates as the methods, on validation (where tables order it) and on test (what they report)."""

    val_per_user: pd.DataFrame
    test_per_user: pd.DataFrame

    @classmethod
    def of(cls, validation: EvalSplit, test: EvalSplit, ks: Sequence[int]) -> "ChanceReference":
        return cls(chance_per_user(validation, ks), chance_per_user(test, ks))

    def val_summary(self) -> dict[str, float]:
        return summarize(self.val_per_user)

    def test_summary(self) -> dict[str, float]:
        return summarize(self.test_per_user)


def per_user_long(results: dict[MethodKey, MethodResult]) -> pd.DataFrame:
    """Every result's per-user test metrics stacked: columns ``method`` (the family), ``seed`` (NaN for
    unseeded methods), ``user_idx`` and the metrics (the long form :mod:`vlm4rec.stats` tests)."""
    frames = [r.test_per_user.assign(method=key.family, seed=key.seed) for key, r in results.items()]
    long = pd.concat(frames, ignore_index=True)
    return long.astype({"seed": "float64"})


def rank_and_score(model: Recommender, split: EvalSplit, ks: Sequence[int],
                   timing: dict[str, float] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Rank top-max(ks) for the split's users with its seen items excluded, and score against its
    targets, with an already fitted ``model``. Returns (topk, per-user metrics)."""
    start = time.perf_counter()
    topk = split.rank(model, split.users, split.exclude, max(ks))
    if timing is not None:
        seconds = time.perf_counter() - start
        timing.update(score_s=seconds, users_per_s=len(split.users) / max(seconds, 1e-12))
    return topk, ranking_metrics(topk, split.targets, split.users, ks)


def evaluate(model: Recommender, split: EvalSplit, ks: Sequence[int] = DEFAULT_KS,
             timing: dict[str, float] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Fit ``model`` on the split's history, then :func:`rank_and_score`. Returns (topk, per-user
    metrics); fills ``timing`` (fit_s, score_s, users_per_s) when given."""
    start = time.perf_counter()
    model.fit(split.history)
    if timing is not None:
        timing["fit_s"] = time.perf_counter() - start
    return rank_and_score(model, split, ks, timing)


def _as_candidates(candidates: Sequence[Candidate] | Callable[[], Recommender]) -> list[Candidate]:
    """A single builder is a method without hyperparameters: one candidate with config {}."""
    if callable(candidates):
        return [Candidate(config={}, build=candidates)]
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no candidate configurations to select from")
    for cand in candidates:
        json.dumps(cand.config)  # configs are saved as JSON: fail before any fitting if one is not
    return candidates


def validation_monitor(split: EvalSplit, ks: Sequence[int], select_metric: str) -> Callable[[Recommender], float]:
    """The selection metric of a fitted model on ``split``, through the same ranking and metrics as the
    selection itself (what early stopping of an :class:`IterativeRecommender` watches). It ranks only to the
    metric's own cut-off: by the engine's total order that list is the first k of the selection's longer one,
    so the value is the same, for less selection work at every check."""
    cutoff = int(select_metric.partition("@")[2])
    if cutoff not in ks:
        raise ValueError(f"select_metric {select_metric!r} has a cut-off outside ks {list(ks)}")

    def monitor(model: Recommender) -> float:
        return summarize(rank_and_score(model, split, [cutoff])[1])[select_metric]
    return monitor


@dataclass
class Selection:
    """Outcome of :func:`select_on_validation`: the chosen candidate and what selection saw."""

    index: int
    config: dict[str, Any]        # the candidate's config, plus ``epochs`` (best epoch) for iterative models
    val_grid: pd.DataFrame
    val_per_user: pd.DataFrame
    training: dict[str, Any] | None
    seconds: float
    model: Recommender            # the chosen candidate as validated: fitted on train (its best checkpoint)


def _fit_for_validation(model: Recommender, split: EvalSplit, ks: Sequence[int],
                        select_metric: str) -> TrainingLog | None:
    """Fit on the validation split's history; iterative models early-stop on the selection metric."""
    if isinstance(model, IterativeRecommender):
        return model.fit_monitored(split.history, validation_monitor(split, ks, select_metric))
    model.fit(split.history)
    return None


def select_on_validation(candidates: Sequence[Candidate], split: EvalSplit, ks: Sequence[int],
                         select_metric: str) -> Selection:
    """The best candidate by ``select_metric`` on ``split`` (the validation split; first on ties).

    ``split`` is the validation split: this function never sees test data. Iterative models are early-
    stopped on the same metric; their chosen number of epochs becomes part of the chosen configuration.
    A grid in which no candidate reaches a finite validation metric is an error, never a silent pick.
    """
    started = time.perf_counter()
    rows, best, best_value, best_per_user, best_log, best_model = [], -1, -np.inf, None, None, None
    configs = []
    for index, cand in enumerate(candidates):
        model = cand.build()
        log = _fit_for_validation(model, split, ks, select_metric)
        per_user = rank_and_score(model, split, ks)[1]
        macro = summarize(per_user)
        if select_metric not in macro:
            raise ValueError(f"select_metric {select_metric!r} is not computed (have {sorted(macro)})")
        config = cand.config | ({"epochs": log.best_epoch} if log is not None else {})
        configs.append(config)
        rows.append({"candidate": index, "config": json.dumps(config, sort_keys=True), **macro})
        if np.isfinite(macro[select_metric]) and macro[select_metric] > best_value:
            best, best_value, best_per_user, best_log, best_model = index, macro[select_metric], per_user, log, model
    if best < 0:
        raise ValueError(f"no candidate reached a finite validation {select_metric} "
                         f"({len(candidates)} candidates over {len(split.users)} validation users): "
                         "nothing to select; check the split (does validation hold any targets?)")
    return Selection(best, configs[best], pd.DataFrame(rows), best_per_user,
                     best_log.as_dict() if best_log is not None else None, time.perf_counter() - started, best_model)


def test_chosen(key: MethodKey, model: Recommender, selection: Selection, tests: Mapping[str, EvalSplit],
                n_items: int, ks: Sequence[int], select_metric: str,
                out_dirs: Mapping[str, Path | None]) -> dict[str, MethodResult]:
    """Fit the chosen model once (for the chosen number of epochs) on the history the ``tests`` splits share,
    then test it once on each: {split name: result}, saved under ``out_dirs[name]`` when given."""
    if isinstance(model, IterativeRecommender) and "epochs" in selection.config:
        model.epochs = int(selection.config["epochs"])
    histories = {id(split.history) for split in tests.values()}
    if len(histories) != 1:
        raise ValueError("the test splits of one fit must share its history")
    started = time.perf_counter()
    model.fit(next(iter(tests.values())).history)
    return test_fitted(key, model, selection, tests, n_items, ks, select_metric, out_dirs,
                       time.perf_counter() - started)


def validated_checkpoint(model: Recommender, selection: Selection, validation: EvalSplit, ks: Sequence[int],
                         select_metric: str) -> tuple[Selection, float]:
    """MMRec's protocol for one more seed: the chosen configuration (``model``, built with that seed) trained
    on the validation split's history and early-stopped on it as in selection, kept at its best checkpoint
    (no refit). Returns ``selection`` holding that model, its epochs and training log, and the seconds."""
    started = time.perf_counter()
    log = _fit_for_validation(model, validation, ks, select_metric)
    config = selection.config | ({"epochs": log.best_epoch} if log is not None else {})
    return (replace(selection, config=config, training=log.as_dict() if log is not None else None, model=model),
            time.perf_counter() - started)


def test_fitted(key: MethodKey, model: Recommender, selection: Selection, tests: Mapping[str, EvalSplit],
                n_items: int, ks: Sequence[int], select_metric: str, out_dirs: Mapping[str, Path | None],
                fit_s: float) -> dict[str, MethodResult]:
    """Test an already fitted ``model`` once on each of ``tests``: {split name: result}, saved under
    ``out_dirs[name]`` when given (``fit_s``: the seconds its fit took, for the stage's cost)."""
    results = {}
    for name, split in tests.items():
        timing: dict[str, float] = {"val_s": selection.seconds, "fit_s": fit_s}
        topk, test_per_user = rank_and_score(model, split, ks, timing)
        result = MethodResult(key=key, config=selection.config, val_grid=selection.val_grid,
                              val_per_user=selection.val_per_user, test_per_user=test_per_user, test_topk=topk,
                              coverage={f"coverage@{k}": catalogue_coverage(topk, n_items, k) for k in ks},
                              timing=timing, diagnostics=model.diagnostics(), select_metric=select_metric,
                              training=selection.training)
        if out_dirs.get(name) is not None:
            save_result(result, out_dirs[name])
        results[name] = result
    return results


def select_and_test_on(method: str, candidates_for: Callable[[int], Sequence[Candidate]], data: EvalData,
                       test_splits: Callable[[], Mapping[str, EvalSplit]], seeds: Sequence[int] | None,
                       ks: Sequence[int],
                       select_metric: str, out_dirs: Callable[[MethodKey], Mapping[str, Path | None]],
                       refit: bool = True) -> dict[str, dict[MethodKey, MethodResult]]:
    """The one select-then-test: ``method``'s configuration (and number of epochs) selected on ``data``'s
    validation split with the first seed, then the chosen configuration fitted once per seed (once, key
    without a seed, when ``seeds`` is None: ``candidates_for`` gets 0) and tested on each split of
    ``test_splits()`` (split name -> split, one fit shared; called once the choice is made, so that selection
    never holds test data). Returns {split name: {result key: result}}; ``out_dirs(key)`` says where each
    split's result of ``key`` is saved.

    ``refit`` True: each seed's fit is on the test splits' history (train + validation) for the chosen
    number of epochs. False (MMRec's protocol): no refit; each seed's model is the train-only run
    early-stopped on validation, at its best checkpoint (the selection run itself for the first seed)."""
    if seeds is not None and not seeds:
        raise ValueError(f"{method}: no seeds given; a seeded method needs at least one")
    first = seeds[0] if seeds else 0
    grid = _as_candidates(candidates_for(first))
    selection = select_on_validation(grid, data.validation(), ks, select_metric)
    tests = test_splits()
    results: dict[str, dict[MethodKey, MethodResult]] = {name: {} for name in tests}
    for seed in seeds or [None]:
        key = MethodKey(method, seed)
        chosen = grid if seed is None or seed == first else _as_candidates(candidates_for(seed))
        if refit:
            tested = test_chosen(key, chosen[selection.index].build(), selection, tests, data.n_items, ks,
                                 select_metric, out_dirs(key))
        else:
            seed_selection, fit_s = (
                (selection, 0.0) if chosen is grid
                else validated_checkpoint(chosen[selection.index].build(), selection, data.validation(), ks,
                                          select_metric))
            tested = test_fitted(key, seed_selection.model, seed_selection, tests, data.n_items, ks, select_metric,
                                 out_dirs(key), fit_s)
        for name, result in tested.items():
            results[name][key] = result
    return results


def select_and_test(method: str, candidates: Sequence[Candidate] | Callable[[], Recommender],
                    data: EvalData, ks: Sequence[int] = DEFAULT_KS, select_metric: str = "ndcg@10",
                    out_dir: Path | None = None) -> MethodResult:
    """Select ``method``'s configuration on validation, then evaluate the chosen one on test once.

    ``candidates`` is a grid of :class:`Candidate` or one zero-argument builder (no hyperparameters).
    The chosen model is built fresh and fitted on train + validation before the test ranking. Saved
    under ``out_dir`` (see :func:`save_result`) when given.
    """
    grid = _as_candidates(candidates)
    results = select_and_test_on(method, lambda seed: grid, data, lambda: {"test": data.test()}, None, ks, select_metric,
                                 lambda key: {"test": out_dir})
    return results["test"][MethodKey(method)]


def select_and_test_methods(methods: dict[str, Sequence[Candidate]], data: EvalData, ks: Sequence[int],
                            select_metric: str, out_dir: Path | None = None) -> dict[MethodKey, MethodResult]:
    """:func:`select_and_test` for each method on the same data; results under ``out_dir/<method>``."""
    return {MethodKey(method): select_and_test(method, candidates, data, ks, select_metric,
                                               out_dir / method if out_dir is not None else None)
            for method, candidates in methods.items()}


def select_and_test_seeds(method: str, candidates_for: Callable[[int], Sequence[Candidate]], data: EvalData,
                          seeds: Sequence[int], ks: Sequence[int] = DEFAULT_KS, select_metric: str = "ndcg@10",
                          out_dir: Path | None = None, refit: bool = True) -> dict[MethodKey, MethodResult]:
    """A seeded method: its configuration (and number of epochs) is selected on validation with the first
    seed; the chosen configuration is then refitted on train + validation and tested once per seed (with
    ``refit`` False: each seed's train-only run at its best validation checkpoint, :func:`select_and_test_on`).

    ``candidates_for(seed)`` returns the same grid, in the same order, built with ``seed``. Results are
    keyed by ``MethodKey(method, seed)`` and saved under ``out_dir/<key name>``; every seed's result carries
    the selection run's validation numbers.
    """
    if not seeds:
        raise ValueError(f"{method}: no seeds given; a seeded method needs at least one")
    return select_and_test_on(method, candidates_for, data, lambda: {"test": data.test()}, seeds, ks, select_metric,
                              lambda key: {"test": out_dir / key.name if out_dir is not None else None},
                              refit)["test"]


def save_result(result: MethodResult, out_dir: str | Path) -> None:
    """Write chosen.json, val_grid.parquet, val_per_user.parquet, test_per_user.parquet, test_topk.npy,
    summary.json (test macro metrics, coverage, diagnostics) and, for iterative models, training.json.
    No wall times: the files of two identical runs are byte-identical."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chosen.json").write_text(json.dumps({"method": result.key.name, "config": result.config,
                                                 "select_metric": result.select_metric}, indent=1))
    result.val_grid.to_parquet(out / "val_grid.parquet", index=False)
    result.val_per_user.to_parquet(out / "val_per_user.parquet", index=False)
    result.test_per_user.to_parquet(out / "test_per_user.parquet", index=False)
    np.save(out / "test_topk.npy", result.test_topk)
    summary = {"method": result.key.name, "test": result.test_summary(), "coverage": result.coverage,
               "diagnostics": result.diagnostics}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if result.training is not None:
        (out / "training.json").write_text(json.dumps(result.training, indent=1))


def load_result(in_dir: str | Path) -> MethodResult:
    """Read what :func:`save_result` wrote (``timing`` is empty: it lives in the stage's metrics); a missing,
    truncated or corrupt file is a StudyError naming it and the stage that writes it."""
    path = Path(in_dir)
    chosen = _json_entries(path / "chosen.json", "method", "config", "select_metric")
    summary = _json_entries(path / "summary.json", "coverage", "diagnostics")
    training = path / "training.json"
    return MethodResult(key=MethodKey.parse(chosen["method"]), config=chosen["config"],
                        val_grid=read_output(path / "val_grid.parquet", pd.read_parquet),
                        val_per_user=read_output(path / "val_per_user.parquet", pd.read_parquet),
                        test_per_user=read_output(path / "test_per_user.parquet", pd.read_parquet),
                        test_topk=read_output(path / "test_topk.npy", np.load), coverage=summary["coverage"],
                        timing={}, diagnostics=summary["diagnostics"], select_metric=chosen["select_metric"],
                        training=_json_entries(training) if training.exists() else None)


def _json_entries(path: Path, *keys: str) -> dict[str, Any]:
    """A result's JSON file, required to hold ``keys``."""
    def read(file: Path) -> dict[str, Any]:
        payload = json.loads(file.read_text())
        return payload | {key: payload[key] for key in keys}
    return read_output(path, read)


def study_chance(prepared: PreparedData, ks: Sequence[int]) -> ChanceReference:
    """Chance on the study split: a uniformly random ranking of each user's unseen items of the universe
    (the candidates every method ranks), on validation and on test."""
    data = EvalData.from_prepared(prepared)
    return ChanceReference.of(data.validation(), data.test(), ks)
