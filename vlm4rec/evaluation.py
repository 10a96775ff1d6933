"""The one path from a model to numbers: fit, recommend, score; select on validation, test once.

Protocol (STUDY.md section 4): every candidate configuration is fitted on the train history and
ranked on validation (train items excluded); the best one by ``select_metric`` (first on ties) is
refitted on train + validation and evaluated on test (train + validation items excluded) exactly once.

Leakage is ruled out by structure: selection receives an :class:`EvalSplit` from
:meth:`EvalData.validation`, which holds no test data, and :meth:`EvalData.test` (the only reader of
``test_targets``) is called only by :func:`select_and_test`, after the choice is made.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vlm4rec.data import PreparedData
from vlm4rec.matching import Recommender, recommend
from vlm4rec.metrics import catalogue_coverage, ranking_metrics, summarize
from vlm4rec.splits import History, build_history, targets_of

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)


@dataclass(frozen=True)
class EvalSplit:
    """Everything one evaluation phase may see: the history to fit on, the items to exclude, the
    relevant items and the users that have some."""

    history: History
    exclude: sp.csr_matrix
    targets: sp.csr_matrix
    users: np.ndarray


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

    @classmethod
    def from_prepared(cls, data: PreparedData) -> "EvalData":
        inter, n_users, n_items = data.interactions, data.n_users, data.n_items
        train = build_history(inter, ("train",), n_users, n_items)
        return cls(n_users=n_users, n_items=n_items, train_history=train,
                   trainval_history=build_history(inter, ("train", "val"), n_users, n_items),
                   val_targets=targets_of(inter, "val", n_users, n_items),
                   test_targets=targets_of(inter, "test", n_users, n_items),
                   item_popularity=np.asarray(train.matrix.sum(axis=0)).ravel().astype(np.int64))

    @property
    def val_users(self) -> np.ndarray:
        return users_with_targets(self.val_targets)

    @property
    def test_users(self) -> np.ndarray:
        return users_with_targets(self.test_targets)

    def validation(self) -> EvalSplit:
        """Fit on train, exclude train items, rank against validation targets."""
        return EvalSplit(self.train_history, self.train_history.matrix, self.val_targets, self.val_users)

    def test(self) -> EvalSplit:
        """Fit on train + validation, exclude both, rank against test targets (select_and_test only)."""
        return EvalSplit(self.trainval_history, self.trainval_history.matrix, self.test_targets,
                         self.test_users)


@dataclass(frozen=True)
class Candidate:
    """One configuration of a method: its hyperparameters (JSON-able) and how to build it fresh."""

    config: dict[str, Any]
    build: Callable[[], Recommender]


@dataclass
class MethodResult:
    """What a method's selection and single test evaluation produced."""

    method: str
    config: dict[str, Any]
    val_grid: pd.DataFrame        # one row per candidate: candidate, config (JSON), macro metrics, times
    val_per_user: pd.DataFrame    # chosen configuration on validation
    test_per_user: pd.DataFrame
    test_topk: np.ndarray
    coverage: dict[str, float]    # catalogue_coverage@k on test
    timing: dict[str, float]      # test phase: fit_s, score_s, users_per_s
    diagnostics: dict[str, Any] = field(default_factory=dict)
    select_metric: str = "ndcg@10"

    def test_summary(self) -> dict[str, float]:
        return summarize(self.test_per_user)


def evaluate(model: Recommender, history: History, exclude: sp.csr_matrix, targets: sp.csr_matrix,
             users: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
             timing: dict[str, float] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Fit ``model`` on ``history``, rank top-max(ks) for ``users`` with ``exclude`` masked, and
    score against ``targets``. Returns (topk, per-user metrics); fills ``timing`` (fit_s, score_s,
    users_per_s) when given."""
    start = time.perf_counter()
    model.fit(history)
    fitted = time.perf_counter()
    topk = recommend(model, users, exclude, max(ks))
    scored = time.perf_counter()
    if timing is not None:
        timing.update(fit_s=fitted - start, score_s=scored - fitted,
                      users_per_s=len(users) / max(scored - fitted, 1e-12))
    return topk, ranking_metrics(topk, targets, users, ks)


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


def select_on_validation(candidates: Sequence[Candidate], split: EvalSplit, ks: Sequence[int],
                         select_metric: str) -> tuple[int, pd.DataFrame, pd.DataFrame]:
    """(index of the best candidate, grid table, its validation per-user metrics).

    ``split`` is the validation split: this function never sees test data.
    """
    rows, best_index, best_value, best_per_user = [], -1, -np.inf, None
    for index, cand in enumerate(candidates):
        timing: dict[str, float] = {}
        _, per_user = evaluate(cand.build(), split.history, split.exclude, split.targets, split.users,
                               ks, timing)
        macro = summarize(per_user)
        if select_metric not in macro:
            raise ValueError(f"select_metric {select_metric!r} is not computed (have {sorted(macro)})")
        rows.append({"candidate": index, "config": json.dumps(cand.config, sort_keys=True), **macro,
                     "fit_s": timing["fit_s"], "score_s": timing["score_s"]})
        if macro[select_metric] > best_value:
            best_index, best_value, best_per_user = index, macro[select_metric], per_user
    return best_index, pd.DataFrame(rows), best_per_user


def select_and_test(method: str, candidates: Sequence[Candidate] | Callable[[], Recommender],
                    data: EvalData, ks: Sequence[int] = DEFAULT_KS, select_metric: str = "ndcg@10",
                    out_dir: Path | None = None) -> MethodResult:
    """Select ``method``'s configuration on validation, then evaluate the chosen one on test once.

    ``candidates`` is a grid of :class:`Candidate` or one zero-argument builder (no hyperparameters).
    The chosen model is built fresh and fitted on train + validation before the test ranking. Saved
    under ``out_dir`` (see :func:`save_result`) when given.
    """
    grid = _as_candidates(candidates)
    best, val_grid, val_per_user = select_on_validation(grid, data.validation(), ks, select_metric)
    chosen = grid[best]
    model = chosen.build()
    test = data.test()
    timing: dict[str, float] = {}
    topk, test_per_user = evaluate(model, test.history, test.exclude, test.targets, test.users, ks, timing)
    result = MethodResult(method=method, config=chosen.config, val_grid=val_grid,
                          val_per_user=val_per_user, test_per_user=test_per_user, test_topk=topk,
                          coverage={f"coverage@{k}": catalogue_coverage(topk, data.n_items, k) for k in ks},
                          timing=timing, diagnostics=model.diagnostics(), select_metric=select_metric)
    if out_dir is not None:
        save_result(result, out_dir)
    return result


def save_result(result: MethodResult, out_dir: str | Path) -> None:
    """Write chosen.json, val_grid.parquet, val_per_user.parquet, test_per_user.parquet,
    test_topk.npy and summary.json (test macro metrics, coverage, timing, diagnostics)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chosen.json").write_text(json.dumps({"method": result.method, "config": result.config,
                                                 "select_metric": result.select_metric}, indent=1))
    result.val_grid.to_parquet(out / "val_grid.parquet", index=False)
    result.val_per_user.to_parquet(out / "val_per_user.parquet", index=False)
    result.test_per_user.to_parquet(out / "test_per_user.parquet", index=False)
    np.save(out / "test_topk.npy", result.test_topk)
    summary = {"method": result.method, "test": result.test_summary(), "coverage": result.coverage,
               "timing": result.timing, "diagnostics": result.diagnostics}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def load_result(in_dir: str | Path) -> MethodResult:
    """Read what :func:`save_result` wrote."""
    path = Path(in_dir)
    chosen = json.loads((path / "chosen.json").read_text())
    summary = json.loads((path / "summary.json").read_text())
    return MethodResult(method=chosen["method"], config=chosen["config"],
                        val_grid=pd.read_parquet(path / "val_grid.parquet"),
                        val_per_user=pd.read_parquet(path / "val_per_user.parquet"),
                        test_per_user=pd.read_parquet(path / "test_per_user.parquet"),
                        test_topk=np.load(path / "test_topk.npy"), coverage=summary["coverage"],
                        timing=summary["timing"], diagnostics=summary["diagnostics"],
                        select_metric=chosen["select_metric"])
