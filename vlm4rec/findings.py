"""The study's findings: each of its questions answered by a paired comparison of two method families on test.

A finding is one paired bootstrap (:func:`vlm4rec.stats.paired_tests`: users and both arms' seeds resampled)
giving the mean difference, its 95% CI and a p-value; Holm corrects the p-values across a family of findings
(a comparison with a one-seed arm has no p and stays out of the family). Which fusion and which single
representation are compared is decided on validation, never on test. Everything here is computed from
:class:`~vlm4rec.evaluation.MethodResult` objects and the prepared data; reading and writing stage outputs is
the report stage's (:mod:`vlm4rec.pipeline.report`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlm4rec.config import EvalParams, FindingsParams, GraphCellParams
from vlm4rec.data import PreparedData
from vlm4rec.evaluation import MethodKey, MethodResult, per_user_long
from vlm4rec.methods import CATALOGUE, hybrid_method, is_kind
from vlm4rec.slices import HISTORY_BINS, history_lengths, item_popularity_groups, per_user_recall_on, slices_for_methods
from vlm4rec.stats import format_p, holm_where_tested, paired_tests

SIGNIFICANCE = 0.05

Results = dict[MethodKey, MethodResult]


def families(results: Results) -> dict[str, list[MethodKey]]:
    """Result keys grouped by method family (seeds of one method together), in result order."""
    grouped: dict[str, list[MethodKey]] = {}
    for key in results:
        grouped.setdefault(key.family, []).append(key)
    return grouped


def validation_score(results: Results, family: str, metric: str) -> float:
    """A family's validation ``metric`` (its selection run: the first seed's for seeded families)."""
    return results[families(results)[family][0]].val_summary()[metric]


def best_by_validation(results: Results, candidates: list[str], metric: str) -> str:
    """The family among ``candidates`` with the best validation metric (never chosen on test)."""
    present = [c for c in candidates if c in families(results)]
    if not present:
        raise ValueError(f"none of {candidates} has results")
    return max(present, key=lambda c: validation_score(results, c, metric))


@dataclass
class Finding:
    """One of the study's questions, answered by a paired comparison on test (:func:`vlm4rec.stats.paired_tests`).

    ``seeds``: (method's, against's) training seeds; ``p``: the paired-bootstrap p (NaN when untested);
    ``verdict_blocked_by``: why no verdict is given ("one seed"), empty otherwise; ``p_holm``: set by
    :func:`holm_across`."""

    id: str
    question: str
    method: str
    against: str
    metric: str
    users: str
    n_users: int
    seeds: tuple[int, int]
    difference: float
    ci_low: float
    ci_high: float
    p: float
    verdict_blocked_by: str = ""
    p_holm: float = float("nan")

    @property
    def answer(self) -> str:
        """The finding in words: a verdict only when the Holm-corrected p is below :data:`SIGNIFICANCE` and
        the CI excludes 0."""
        if self.verdict_blocked_by:
            verdict = f"{self.verdict_blocked_by}: no verdict"
        elif self.p_holm < SIGNIFICANCE and (self.ci_low > 0 or self.ci_high < 0):
            verdict = "yes" if self.difference > 0 else "no, it is worse"
        else:
            verdict = "no clear difference"
        test = "" if self.verdict_blocked_by else f", Holm-corrected paired-bootstrap p = {format_p(self.p_holm)}"
        return (f"{verdict}: {self.method} - {self.against} = {self.difference:+.4f} {self.metric} "
                f"[95% CI {self.ci_low:+.4f}, {self.ci_high:+.4f}]{test}, {self.n_users:,} users ({self.users}), "
                f"{self.seeds[0]} vs {self.seeds[1]} seed(s)")


def compare(fid: str, question: str, per_user: pd.DataFrame, method: str, against: str, metric: str,
            users: str, evaluation: EvalParams) -> Finding | None:
    """Paired comparison of two families in a per-user table (columns method, seed, user_idx, metric);
    None when the table holds no user of both."""
    pair = per_user[per_user["method"].isin([method, against])]
    if set(pair["method"]) != {method, against}:
        return None
    row = paired_tests(pair, against, metric, evaluation.bootstrap_resamples, evaluation.seed).iloc[0]
    return Finding(fid, question, method, against, metric, users, int(row["n_users"]),
                   (int(row["n_seeds"]), int(row["n_seeds_reference"])), float(row["mean_diff"]),
                   float(row["diff_ci_low"]), float(row["diff_ci_high"]), float(row["p"]),
                   str(row["verdict_blocked_by"]))


def holm_across(found: Sequence[Finding]) -> None:
    """Set each finding's ``p_holm``: Holm across the findings that were tested (a one-seed comparison has
    no p and is not in the family)."""
    for finding, p in zip(found, holm_where_tested([f.p for f in found])):
        finding.p_holm = float(p)


def restricted_per_user(results: Results, names: list[str], prepared: PreparedData,
                        items: np.ndarray | None = None, users: np.ndarray | None = None,
                        k: int = 20) -> pd.DataFrame:
    """Per-user recall@k of the named families over a slice: only the test items in ``items`` (users
    with at least one such item), or only the users in ``users`` (no rows when the slice is empty)."""
    frames = []
    for family in names:
        for key in families(results)[family]:
            r = results[key]
            ranked_users = r.test_per_user["user_idx"].to_numpy()
            if items is not None:
                table = per_user_recall_on(r.test_topk, ranked_users, prepared.interactions, items, k)
            else:
                table = r.test_per_user[r.test_per_user["user_idx"].isin(users)][["user_idx", f"recall@{k}"]]
            frames.append(table.assign(method=family, seed=key.seed))
    return pd.concat(frames, ignore_index=True).astype({"seed": "float64"})


def unseen_items(prepared: PreparedData) -> np.ndarray:
    """The items without a positive in train + validation (the "cold" group of
    :func:`vlm4rec.slices.item_popularity_groups`), whose test pairs the cold-item findings score."""
    return np.flatnonzero(item_popularity_groups(prepared.interactions, prepared.n_items).to_numpy() == "cold")


def graph_pairs(cells: Mapping[str, GraphCellParams], description: str, title: str,
                image: str) -> dict[str, tuple[str, str]]:
    """Per multimodal model: its (description + image, title + image) cells, where both exist."""
    by_modalities = {(cell.model, tuple(cell.modalities)): name for name, cell in cells.items()}
    pairs = {}
    for model in dict.fromkeys(cell.model for cell in cells.values()):
        with_description = by_modalities.get((model, (description, image)))
        with_title = by_modalities.get((model, (title, image)))
        if with_description and with_title:
            pairs[model] = (with_description, with_title)
    return pairs


def findings(results: Results, evaluation: EvalParams, params: FindingsParams, representations: list[str],
             prepared: PreparedData, graph_cells: Mapping[str, GraphCellParams] | None = None) -> list[Finding]:
    """The study's questions, each a paired test on test users; Holm across all of them.

    Which fusion and which single representation are compared is decided on validation; inside each
    multimodal recommender the description + image cell is compared with the title + image cell."""
    metric, description, title, image = params.metric, params.description, params.title, params.image
    per_user = per_user_long(results)
    present = families(results)
    out: list[Finding | None] = [
        compare("description_vs_image", "Do grounded descriptions beat raw visual features?", per_user,
                description, image, metric, "all test users", evaluation),
        compare("description_vs_title", "Do grounded descriptions beat the title?", per_user,
                description, title, metric, "all test users", evaluation)]
    fusions = [f for f in present if is_kind(f, "fusion")]
    singles = [r for r in representations if r in present]
    if fusions and singles:
        best_fusion = best_by_validation(results, fusions, evaluation.select_metric)
        best_single = best_by_validation(results, singles, evaluation.select_metric)
        out.append(compare("fusion_vs_best_single", "Does the best content fusion beat the best single "
                           "representation (both chosen on validation)?", per_user, best_fusion, best_single,
                           metric, "all test users", evaluation))
    for model, (with_description, with_title) in graph_pairs(graph_cells or {}, description, title, image).items():
        if {with_description, with_title} <= set(present):
            out.append(compare(f"{model}_description_vs_title", f"Does the grounded description help "
                               f"{CATALOGUE[model].display} "
                               "(description + image against title + image)?", per_user, with_description,
                               with_title, metric, "all test users", evaluation))
    hybrid = hybrid_method(description)
    if hybrid in present and "ease" in present:
        out.append(compare("hybrid_vs_ease", "Do grounded descriptions add to collaborative filtering "
                           f"({hybrid} against EASE^R)?", per_user, hybrid, "ease", metric, "all test users",
                           evaluation))
    k = params.slice_k
    cold = unseen_items(prepared)
    lengths = history_lengths(prepared.interactions)
    short_users = lengths.index[lengths <= params.short_history].to_numpy()
    for against in (title, image):
        cold_table = restricted_per_user(results, [description, against], prepared, items=cold, k=k)
        out.append(compare(f"description_vs_{against}_cold_items",
                           f"Do descriptions beat {against} on cold test items?", cold_table, description,
                           against, f"recall@{k}", "users with a cold test item; recall over those items", evaluation))
        short_table = restricted_per_user(results, [description, against], prepared, users=short_users, k=k)
        out.append(compare(f"description_vs_{against}_short_histories",
                           f"Do descriptions beat {against} for users with short histories?", short_table,
                           description, against, f"recall@{k}",
                           f"users with at most {params.short_history} history items", evaluation))
    answered = [finding for finding in out if finding is not None]
    holm_across(answered)
    return answered


@dataclass(frozen=True)
class ModelComparison:
    """Inside one multimodal recommender: its description + image cell minus its title + image cell, on the
    headline metric over all test users (``overall``) and on recall over the cold test items (``cold``: None
    when no user has one), each Holm-corrected across the models."""

    model: str
    cells: tuple[str, str]
    overall: Finding
    cold: Finding | None


def graph_comparisons(results: Results, evaluation: EvalParams, params: FindingsParams,
                      graph_cells: Mapping[str, GraphCellParams], prepared: PreparedData) -> list[ModelComparison]:
    """Does the grounded description help a multimodal recommender? One :class:`ModelComparison` per model
    whose two cells both have results (paired bootstrap over users and both cells' seeds)."""
    pairs = graph_pairs(graph_cells, params.description, params.title, params.image)
    pairs = {m: p for m, p in pairs.items() if set(p) <= set(families(results))}
    if not pairs:
        return []
    per_user = per_user_long(results)
    cold = unseen_items(prepared)
    compared = []
    for model, cells in pairs.items():
        overall = compare(model, "", per_user, *cells, params.metric, "", evaluation)
        cold_users = restricted_per_user(results, list(cells), prepared, items=cold, k=params.slice_k)
        on_cold = compare(model, "", cold_users, *cells, f"recall@{params.slice_k}", "", evaluation)
        compared.append(ModelComparison(model, cells, overall, on_cold))
    holm_across([c.overall for c in compared])
    holm_across([c.cold for c in compared if c.cold is not None])
    return compared


def p_floor_note(found: Sequence[Finding], n_resamples: int) -> str | None:
    """A caveat when the bootstrap is too coarse for Holm: no p can fall below 2 / (n_resamples + 1), so with
    m tested findings the smallest Holm-corrected p is at least m times that; None when that is below
    :data:`SIGNIFICANCE`."""
    tested = sum(not np.isnan(f.p) for f in found)
    floor = 2 / (n_resamples + 1)
    if tested * floor < SIGNIFICANCE:
        return None
    return (f"With eval.bootstrap_resamples = {n_resamples:,} no p-value falls below {floor:.4f}, so none of the "
            f"{tested} tested findings can reach Holm-corrected p < {SIGNIFICANCE}: raise it for verdicts.")


def family_slices(results: Results, wanted: Sequence[str], prepared: PreparedData, k: int,
                  metrics: Sequence[str], bins: Sequence[float] = HISTORY_BINS) -> pd.DataFrame:
    """:func:`vlm4rec.slices.slices_for_methods` for the method families in ``wanted`` that have results
    (a seeded family: the mean of its seeds' values, every seed holding the same users and test pairs)."""
    grouped = families(results)
    keys = [key for family in wanted if family in grouped for key in grouped[family]]
    sliced = slices_for_methods({key.name: (results[key].test_topk, results[key].test_per_user["user_idx"].to_numpy(),
                                            results[key].test_per_user) for key in keys},
                                prepared, k=k, metrics=metrics, bins=bins)
    sliced["method"] = sliced["method"].map({key.name: key.family for key in keys})
    columns = ["method", "slice_kind", "slice", "metric", "n"]
    return sliced.groupby(columns, sort=False, as_index=False)["value"].mean()
