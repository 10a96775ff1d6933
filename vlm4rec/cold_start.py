"""The strict new-item protocol's candidate sets (docs/protocol.md, "New items").

New items are ranked two ways for the same users: among all items (the user's seen items excluded, as in
the main protocol) and among the cold items only (every warm item excluded too), which isolates whether the
content orders the new items themselves from whether it lifts them above the warm catalogue.

Every method is fitted on the warm training history only, in validation and in test alike (a new item's
interactions are never fitted on), selected on the validation cold items ranked among themselves (ranked
among all items, nearly every method's validation NDCG@10 is 0 on ML-1M, which would leave the choice to the
tie rule: the first candidate, an untrained epoch 0), and then tested once on the test cold items under both
candidate sets from the same fitted model (:func:`select_and_test_new_items`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vlm4rec.evaluation import (Candidate, EvalData, EvalSplit, MethodKey, MethodResult, select_and_test_on,
                                users_with_targets)
from vlm4rec.matching import Ranker, Recommender, recommend
from vlm4rec.splits import History
from vlm4rec.stats import format_p, holm_where_tested, paired_tests

CANDIDATE_SETS = ("all", "cold")


def exclusion_outside(seen: sp.csr_matrix, candidates: np.ndarray | None,
                      users: np.ndarray | None = None) -> sp.csr_matrix:
    """The ``recommend`` exclusion mask: the user's ``seen`` items, plus, when ``candidates`` is given,
    every item outside it (so that only candidate items are ranked), in the rows of ``users`` (default all;
    the other rows, never ranked, keep only their seen items). Binary CSR of ``seen``'s shape, built row by
    row in index order (no sort: a split of ML-1M masks about ten million entries)."""
    seen = sp.csr_matrix(seen, dtype=np.float32)
    if candidates is None:
        return seen
    n_users, n_items = seen.shape
    outside = np.setdiff1d(np.arange(n_items), np.asarray(candidates, dtype=np.int64))
    counts = np.zeros(n_users, dtype=np.int64)
    counts[np.arange(n_users) if users is None else np.asarray(users, dtype=np.int64)] = len(outside)
    indices = np.tile(outside.astype(seen.indices.dtype), int(counts.sum()) // max(len(outside), 1))
    mask = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, np.concatenate([[0], np.cumsum(counts)])),
                         shape=seen.shape)
    out = (seen + mask).tocsr()
    out.data[:] = 1.0
    return out


@dataclass(frozen=True)
class NewItemData(EvalData):
    """:class:`EvalData` of the strict protocol: both phases fit on the warm training history and rank the
    phase's cold items among all items (or, ``among_cold``, among the phase's cold items only), so that
    :func:`~vlm4rec.evaluation.select_on_validation` and the learned fusions' trainers run on it unchanged."""

    val_items: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    test_items: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    among_cold: bool = False

    @classmethod
    def from_cold_split(cls, inter: pd.DataFrame, n_users: int, n_items: int, val_items: np.ndarray,
                        test_items: np.ndarray, among_cold: bool = False, rank: Ranker = recommend) -> "NewItemData":
        """From interactions labelled by :func:`~vlm4rec.splits.assign_cold_split`."""
        base = EvalData.from_interactions(inter, n_users, n_items, rank)
        return cls(**{**base.__dict__, "trainval_history": base.train_history}, val_items=val_items,
                   test_items=test_items, among_cold=among_cold)

    def with_candidates(self, among_cold: bool) -> "NewItemData":
        return replace(self, among_cold=among_cold)

    def _split(self, targets: sp.csr_matrix, items: np.ndarray) -> EvalSplit:
        users = users_with_targets(targets)
        exclude = exclusion_outside(self.train_history.matrix, items if self.among_cold else None, users)
        return EvalSplit(self.train_history, exclude, targets, users, self.rank)

    def validation(self) -> EvalSplit:
        return self._split(self.val_targets, self.val_items)

    def test(self) -> EvalSplit:
        return self._split(self.test_targets, self.test_items)


class FittedOnce(Recommender):
    """``model`` refitted only when given another history object: in the strict protocol both phases fit on
    the same warm training history, so a grid's candidates (e.g. the hybrids' content weights) can share one
    costly fit (EASE^R's inverse) instead of repeating it per candidate and phase."""

    def __init__(self, model: Recommender):
        self.model, self.name, self._fitted_on = model, model.name, None

    def fit(self, history: History) -> "FittedOnce":
        if history is not self._fitted_on:
            self.model.fit(history)
            self._fitted_on = history
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return self.model.score_block(users)

    def diagnostics(self) -> dict[str, float | int]:
        return self.model.diagnostics()


def select_and_test_new_items(method: str, candidates_for: Callable[[int], Sequence[Candidate]],
                              data: NewItemData, ks: Sequence[int], select_metric: str,
                              seeds: Sequence[int] | None = None,
                              out_dir: Path | None = None) -> dict[str, dict[MethodKey, MethodResult]]:
    """``method`` on the new items (:func:`~vlm4rec.evaluation.select_and_test_on`): its configuration (and
    number of epochs) selected on ``data``'s validation split (its candidate set: the stage ranks the
    validation cold items among themselves) with the first seed, then fitted on the warm training history once
    per seed (once for an unseeded method, ``seeds`` None: ``candidates_for`` gets 0) and tested under both
    candidate sets. Returns {candidate set: {result key: result}}; saved under
    ``out_dir/<candidate set>/<key name>``."""
    def test_splits() -> dict[str, EvalSplit]:
        return {name: data.with_candidates(name == "cold").test() for name in CANDIDATE_SETS}

    def out_dirs(key: MethodKey) -> dict[str, Path | None]:
        return {name: out_dir / name / key.name if out_dir is not None else None for name in CANDIDATE_SETS}

    return select_and_test_on(method, candidates_for, data, test_splits, seeds, ks, select_metric, out_dirs)


def new_item_findings(per_user: pd.DataFrame, description: str, against: list[str], metric: str,
                      n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """"Do grounded descriptions beat X on new items?" for every X in ``against``: one paired bootstrap each
    (``description`` minus X over the users of both, CI and p over users and seeds,
    :func:`stats.paired_tests`), ``p_holm`` Holm-corrected across the questions that got a p (a seeded arm
    with one seed gets none: "one seed"). ``per_user`` is long (method, seed, user_idx, ``metric``); an X
    without rows is skipped (e.g. a method not run)."""
    rows = []
    for other in against:
        pair = per_user[per_user["method"].isin([description, other])]
        if set(pair["method"]) == {description, other}:
            rows.append(paired_tests(pair, other, metric, n_resamples, seed).iloc[0])
    table = pd.DataFrame(rows).reset_index(drop=True)
    if not table.empty:
        table["p_holm"] = holm_where_tested(table["p"].to_numpy())
    return table


def new_item_findings_display(found: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """"Does the grounded description beat X on new items?": per candidate set and X, the paired difference
    with its 95% CI and the Holm-corrected p (or why there is no verdict), from the findings records of the
    stage's metrics (``metrics/cold_start.json``, candidate set -> records: this stage shows it, and so does
    the report)."""
    rows = [{"candidates": candidates, "description": r["method"], "against": r["reference"], "metric": r["metric"],
             "difference": f"{r['mean_diff']:+.4f} [{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}]",
             "p (Holm)": (f"{r['verdict_blocked_by']}: no verdict" if r["verdict_blocked_by"]
                          else format_p(r["p_holm"]))}
            for candidates, records in found.items() for r in records]
    return pd.DataFrame(rows)


def new_item_counts(inter: pd.DataFrame, val_items: np.ndarray, test_items: np.ndarray) -> dict[str, int]:
    """What the stage prints and docs/protocol.md quotes: cold items per phase, test pairs and test users."""
    test = inter[inter["split"] == "test"]
    return {"val_cold_items": len(val_items), "test_cold_items": len(test_items),
            "val_pairs": int((inter["split"] == "val").sum()), "test_pairs": len(test),
            "test_users": int(test["user_idx"].nunique())}
