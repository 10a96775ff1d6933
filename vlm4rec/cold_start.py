"""The strict new-item protocol's candidate sets (docs/protocol.md, "New items").

New items are ranked two ways for the same users: among all items (the user's seen items excluded, as in
the main protocol) and among the cold items only (every warm item excluded too), which isolates whether the
content orders the new items themselves from whether it lifts them above the warm catalogue.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vlm4rec.evaluation import EvalSplit, evaluate, users_with_targets
from vlm4rec.matching import ProfileRecommender
from vlm4rec.splits import build_history, targets_of
from vlm4rec.stats import holm_where_tested, paired_tests


def exclusion_outside(seen: sp.csr_matrix, candidates: np.ndarray | None) -> sp.csr_matrix:
    """The ``recommend`` exclusion mask: the user's ``seen`` items, plus, when ``candidates`` is given,
    every item outside it (so that only candidate items are ranked). Binary CSR of ``seen``'s shape."""
    seen = sp.csr_matrix(seen, dtype=np.float32)
    if candidates is None:
        return seen
    outside = np.setdiff1d(np.arange(seen.shape[1]), np.asarray(candidates, dtype=np.int64))
    n_users = seen.shape[0]
    mask = sp.csr_matrix((np.ones(n_users * len(outside), dtype=np.float32),
                          (np.repeat(np.arange(n_users), len(outside)), np.tile(outside, n_users))),
                         shape=seen.shape)
    out = seen + mask
    out.data[:] = 1.0
    return out


def new_item_splits(inter: pd.DataFrame, n_users: int, n_items: int, val_items: np.ndarray,
                    test_items: np.ndarray, among_cold: bool) -> tuple[EvalSplit, EvalSplit]:
    """(validation, test) :class:`EvalSplit` of the strict protocol for ``inter`` labelled by
    :func:`~vlm4rec.splits.assign_cold_split`. Both fit on the training history only (no cold item's
    interaction is ever fitted on) and exclude it; the candidates are all items, or (``among_cold``) the
    phase's own cold items."""
    history = build_history(inter, ("train",), n_users, n_items)
    splits = []
    for phase, items in (("val", val_items), ("test", test_items)):
        targets = targets_of(inter, phase, n_users, n_items)
        exclude = exclusion_outside(history.matrix, items if among_cold else None)
        splits.append(EvalSplit(history, exclude, targets, users_with_targets(targets)))
    return splits[0], splits[1]


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


def new_item_counts(inter: pd.DataFrame, val_items: np.ndarray, test_items: np.ndarray) -> dict[str, int]:
    """What the stage prints and docs/protocol.md quotes: cold items per phase, test pairs and test users."""
    test = inter[inter["split"] == "test"]
    return {"val_cold_items": len(val_items), "test_cold_items": len(test_items),
            "val_pairs": int((inter["split"] == "val").sum()), "test_pairs": len(test),
            "test_users": int(test["user_idx"].nunique())}


def profile_per_user(vectors: dict[str, np.ndarray], inter: pd.DataFrame, n_users: int, n_items: int,
                     val_items: np.ndarray, test_items: np.ndarray, ks: list[int]) -> pd.DataFrame:
    """Test per-user metrics of the mean-profile matching of every representation in ``vectors`` on the
    new items, ranked among all items and among the test cold items (column ``candidates``: all | cold).
    Long format (method, seed, candidates, user_idx, metrics) as :func:`new_item_findings` reads it;
    the mean profile has no hyperparameter, so nothing is selected on the validation cold items."""
    frames = []
    for candidates in ("all", "cold"):
        _, test_split = new_item_splits(inter, n_users, n_items, val_items, test_items, candidates == "cold")
        for name, item_vectors in vectors.items():
            _, per_user = evaluate(ProfileRecommender(item_vectors, name=name), test_split, ks)
            frames.append(per_user.assign(method=name, seed=np.nan, candidates=candidates))
    return pd.concat(frames, ignore_index=True)
