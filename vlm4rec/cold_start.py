"""The strict new-item protocol's settings (docs/protocol.md, "New items").

Each method is tested in four settings from one fit (:data:`CANDIDATE_SETS`): the test new items ranked
among all items (the user's seen items excluded, as in the main protocol) and among the new items only
(every warm item excluded too), which isolates whether the content orders the new items themselves from
whether it lifts them above the warm catalogue; the warm test interactions among the warm items; and every
test positive, warm and new, among all items (the field's warm and hybrid settings: what a gain on new items
costs on the catalogue).

Every method is fitted on the warm training history only, in validation and in test alike (a new item's
interactions, and the warm test, are never fitted on), selected on the validation new items ranked among
themselves (ranked among all items, nearly every method's validation NDCG@10 is 0 on ML-1M, which would
leave the choice to the tie rule: the first candidate, an untrained epoch 0), and then tested once in each
setting from the same fitted model (:func:`select_and_test_new_items`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vlm4rec.evaluation import (Candidate, ChanceReference, EvalData, EvalSplit, MethodKey, MethodResult,
                                select_and_test_on, users_with_targets)
from vlm4rec.matching import Ranker, Recommender, recommend
from vlm4rec.metrics import CHANCE, pair_hits, target_pairs
from vlm4rec.splits import History, targets_of
from vlm4rec.stats import (PAIRED_COLUMNS, TWO_WAY_RESAMPLING, arm_replicates, format_p, paired_row,
                           percentile_interval, two_way_replicates, vacuous_because)

#: The settings each new-item test is run under, from one fit: the test new items ranked among all items
#: (``all``) and among the test new items only (``cold``, the field's cold setting); the warm test
#: interactions among the warm items (``warm``); every test positive, warm and new, among all items
#: (``hybrid``).
CANDIDATE_SETS = ("all", "cold", "warm", "hybrid")
#: The settings whose targets are the new items (the new-item findings compare on these).
NEW_ITEM_SETS = ("all", "cold")
#: The settings a method without a signal for new items is tested under (its warm reference).
WARM_SETS = ("warm", "hybrid")


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
    """:class:`EvalData` of the strict protocol: both phases fit on the warm training history; validation
    ranks the validation new items (among themselves when ``candidates`` is ``cold``, else among all items),
    test follows ``candidates`` (one of :data:`CANDIDATE_SETS`), so that
    :func:`~vlm4rec.evaluation.select_on_validation` and the learned fusions' trainers run on it unchanged."""

    val_items: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    test_items: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    warm_targets: sp.csr_matrix | None = None
    candidates: str = "all"

    @classmethod
    def from_new_item_split(cls, inter: pd.DataFrame, n_users: int, n_items: int, val_items: np.ndarray,
                        test_items: np.ndarray, candidates: str = "all", rank: Ranker = recommend) -> "NewItemData":
        """From interactions labelled by :func:`~vlm4rec.splits.assign_new_item_split` (``warm_test`` rows become
        the warm targets)."""
        base = EvalData.from_interactions(inter, n_users, n_items, rank)
        return cls(**{**base.__dict__, "trainval_history": base.train_history}, val_items=val_items,
                   test_items=test_items, warm_targets=targets_of(inter, "warm_test", n_users, n_items),
                   candidates=candidates).with_candidates(candidates)

    def with_candidates(self, candidates: str) -> "NewItemData":
        if candidates not in CANDIDATE_SETS:
            raise ValueError(f"unknown candidate set {candidates!r}; expected one of {CANDIDATE_SETS}")
        return replace(self, candidates=candidates)

    @property
    def warm_items(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.n_items), np.concatenate([self.val_items, self.test_items]))

    def _split(self, targets: sp.csr_matrix, items: np.ndarray | None) -> EvalSplit:
        users = users_with_targets(targets)
        exclude = exclusion_outside(self.train_history.matrix, items, users)
        return EvalSplit(self.train_history, exclude, targets, users, self.rank)

    def validation(self) -> EvalSplit:
        return self._split(self.val_targets, self.val_items if self.candidates == "cold" else None)

    def test(self) -> EvalSplit:
        warm = self.warm_targets if self.warm_targets is not None else sp.csr_matrix(self.test_targets.shape)
        targets, items = {"all": (self.test_targets, None), "cold": (self.test_targets, self.test_items),
                          "warm": (warm, self.warm_items),
                          "hybrid": ((self.test_targets + warm).tocsr(), None)}[self.candidates]
        return self._split(targets, items)


class FittedOnce(Recommender):
    """``model`` refitted only when given another history object: in the strict protocol both phases fit on
    the same warm training history, so a grid's candidates (every content representation and grid point of
    the cold-start models) can share one costly fit (their trained backbone) instead of repeating it per
    candidate and phase."""

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
                              seeds: Sequence[int] | None = None, out_dir: Path | None = None,
                              sets: Sequence[str] = CANDIDATE_SETS) -> dict[str, dict[MethodKey, MethodResult]]:
    """``method`` on the new-item protocol (:func:`~vlm4rec.evaluation.select_and_test_on`): its configuration
    (and number of epochs) selected on ``data``'s validation split (the stage ranks the validation new items
    among themselves: one choice, shared by every setting) with the first seed, then fitted on the warm
    training history once per seed (once for an unseeded method, ``seeds`` None: ``candidates_for`` gets 0)
    and tested under each setting of ``sets``. Returns {setting: {result key: result}}; saved under
    ``out_dir/<setting>/<key name>``."""
    def test_splits() -> dict[str, EvalSplit]:
        return {name: data.with_candidates(name).test() for name in sets}

    def out_dirs(key: MethodKey) -> dict[str, Path | None]:
        return {name: out_dir / name / key.name if out_dir is not None else None for name in sets}

    return select_and_test_on(method, candidates_for, data, test_splits, seeds, ks, select_metric, out_dirs)


def _pair_grid(results: list[MethodResult], pair_users: np.ndarray, pair_items: np.ndarray, k: int) -> np.ndarray:
    """(seeds x pairs) hits of one family's results (its seeds in result order)."""
    return np.stack([pair_hits(r.test_topk, r.test_per_user["user_idx"].to_numpy(), pair_users, pair_items, k)
                     for r in results]).astype(np.float64)


def new_item_findings(results: dict[MethodKey, MethodResult], targets: sp.csr_matrix, description: str,
                      metric: str, chance: ChanceReference | None = None, n_resamples: int = 10_000,
                      seed: int = 0) -> pd.DataFrame:
    """"Do grounded descriptions beat X on new items?" for every other family X in ``results`` (and
    chance, when given), as rows of :func:`vlm4rec.stats.paired_tests`: ``description`` minus X over the test
    users, CI and p from a two-way bootstrap over users **and** the new items (and each arm's seeds,
    :func:`vlm4rec.stats.two_way_replicates`), computed from the per-(user, target item) hits of the saved
    top-K lists, since a few new items carry most test pairs; ``diff_ci_low_users`` / ``diff_ci_high_users``:
    the user-only interval, for comparison. ``metric`` is recall@K. The p-values are unadjusted: the
    confirmatory ones are Holm-corrected in the report, with the rest of their family. A comparison that
    would test nothing is not tested (``verdict_blocked_by``)."""
    name, _, k = metric.partition("@")
    if name != "recall" or not k.isdigit():
        raise ValueError(f"cold_start.metric must be recall@K for the two-way bootstrap, got {metric!r}")
    grouped: dict[str, list[MethodResult]] = {}
    for key, result in results.items():
        grouped.setdefault(key.family, []).append(result)
    if description not in grouped:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    users = grouped[description][0].test_per_user["user_idx"].to_numpy()
    pair_users, pair_items = target_pairs(targets, users)
    per_user = {family: np.stack([r.test_per_user[metric].to_numpy() for r in rs]) for family, rs in grouped.items()}
    hits = {family: _pair_grid(rs, pair_users, pair_items, int(k)) for family, rs in grouped.items()}
    seeded = {family: rs[0].key.seed is not None for family, rs in grouped.items()}
    if chance is not None:
        chance_recall = chance.test_per_user.set_index("user_idx")[metric]
        per_user[CHANCE] = chance_recall.loc[users].to_numpy()[None, :]
        hits[CHANCE] = chance_recall.loc[pair_users].to_numpy()[None, :]
        seeded[CHANCE] = False
    others = [family for family in per_user if family != description]
    # one draw of users and items (and of users alone) for every comparison: the arms' replicates are paired
    two_way = two_way_replicates(pair_users, pair_items, [hits[f] for f in [description, *others]], n_resamples, seed)
    users_only = arm_replicates([per_user[f] for f in [description, *others]], n_resamples, seed)
    rows = []
    for other, both, alone in zip(others, two_way[1:], users_only[1:]):
        mine, theirs = per_user[description], per_user[other]
        one_seed = (seeded[description] and len(mine) == 1) or (seeded[other] and len(theirs) == 1)
        blocked = "one seed" if one_seed else vacuous_because(mine, theirs, metric)
        row = paired_row(description, other, metric, mine, theirs, two_way[0] - both, blocked, n_resamples,
                         resampling=TWO_WAY_RESAMPLING)
        low, high = percentile_interval(users_only[0] - alone)
        rows.append(row | {"diff_ci_low_users": low, "diff_ci_high_users": high})
    return pd.DataFrame(rows)


def new_item_findings_display(found: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """"Does the grounded description beat X on new items?": per setting and X, the paired difference
    with its unadjusted 95% CI resampling users, items and seeds (two-way) and, for comparison, users and
    seeds only, and the unadjusted p (or why it was not tested), from the findings records of the stage's
    metrics (``metrics/cold_start.json``, setting -> records: this stage shows it, and so does the
    report). Exploratory: the confirmatory ones (against the title and the image, among the new items) are
    adjusted in the report's findings, with their family."""
    rows = [{"candidates": candidates, "description": r["method"], "against": r["reference"], "metric": r["metric"],
             "difference [95% CI, users x items x seeds]": difference_with_ci(r),
             "[95% CI, users x seeds]": f"[{r['diff_ci_low_users']:+.4f}, {r['diff_ci_high_users']:+.4f}]",
             "p (exploratory, unadjusted)": p_or_why_not(r)}
            for candidates, records in found.items() for r in records]
    return pd.DataFrame(rows)


def difference_with_ci(record: dict[str, Any]) -> str:
    """A paired-test record's mean difference with its 95% CI, as the tables print it."""
    return f"{record['mean_diff']:+.4f} [{record['diff_ci_low']:+.4f}, {record['diff_ci_high']:+.4f}]"


def p_or_why_not(record: dict[str, Any]) -> str:
    """A paired-test record's unadjusted p, or why the comparison was not tested."""
    blocked = record["verdict_blocked_by"]
    return f"not tested: {blocked}" if blocked else format_p(record["p"], record["p_at_floor"])


def warm_cost_display(costs: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """Each method's warm cost (the new-item metrics' ``warm_cost``: setting -> paired-test records against the
    warm backbone): per setting and method, the difference with its unadjusted 95% CI (users x seeds) and p,
    or why it was not tested."""
    rows = [{"setting": setting, "method": r["method"], "against": r["reference"], "metric": r["metric"],
             "difference [95% CI, users x seeds]": difference_with_ci(r),
             "p (exploratory, unadjusted)": p_or_why_not(r)}
            for setting, records in costs.items() for r in records]
    return pd.DataFrame(rows)


def new_item_counts(inter: pd.DataFrame, val_items: np.ndarray, test_items: np.ndarray) -> dict[str, int | float]:
    """What the stage prints and docs/protocol.md quotes: new items per phase, pairs, test users, the training
    pairs, the warm test's pairs and users (the warm and hybrid settings), the pairs per
    new item on each side (selection on a much more popular population than the test is visible here) and the
    share of the test pairs on the five most-rated test new items (how few items carry the targets)."""
    val, test = inter[inter["split"] == "val"], inter[inter["split"] == "test"]
    warm_test = inter[inter["split"] == "warm_test"]
    per_test_item = test.groupby("item_idx").size().sort_values(ascending=False)
    return {"val_cold_items": len(val_items), "test_cold_items": len(test_items),
            "val_pairs": len(val), "test_pairs": len(test), "test_users": int(test["user_idx"].nunique()),
            "train_pairs": int((inter["split"] == "train").sum()), "warm_test_pairs": len(warm_test),
            "warm_test_users": int(warm_test["user_idx"].nunique()),
            "val_pairs_per_item": round(len(val) / max(len(val_items), 1), 1),
            "test_pairs_per_item": round(len(test) / max(len(test_items), 1), 1),
            "test_pairs_on_top5_items": round(float(per_test_item.head(5).sum() / max(len(test), 1)), 3)}
