"""The study's findings: each of its questions answered by a paired comparison of two method families on test.

A finding is one paired bootstrap (:func:`vlm4rec.stats.paired_tests`: users and both arms' seeds resampled; a
new-item finding also resamples the new items) giving the mean difference, its unadjusted 95% CI and a
p-value. The confirmatory family (:data:`CONFIRMATORY`, declared in docs/protocol.md "Statistics": the paper's
questions) is Holm-corrected as one family; every other finding is exploratory and reports its unadjusted p.
A comparison that would test nothing (one seed, identical or constant arms, too few users with a non-zero
value) is listed as not tested, with the reason. Which fusion and which single representation are compared is
decided on validation, never on test. Everything here is computed from
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
from vlm4rec.evaluation import ChanceReference, MethodKey, MethodResult
from vlm4rec.methods import CATALOGUE, hybrid_method, is_kind
from vlm4rec.metrics import CHANCE
from vlm4rec.slices import HISTORY_BINS, history_lengths, item_popularity_groups, per_user_recall_on, slices_for_methods
from vlm4rec.stats import USER_RESAMPLING, holm_where_tested, p_floor, p_statement, paired_tests
from vlm4rec.tables import per_user_with_chance

SIGNIFICANCE = 0.05
# The confirmatory family (docs/protocol.md, "Statistics"): the description against the title, the image and the
# best fusion; inside each multimodal recommender (``<model>_description_vs_title``); on new items against the
# title and the image (ranked among the new items). Holm runs over these only.
CONFIRMATORY_FIXED = ("description_vs_title", "description_vs_image", "description_vs_fusion",
                      "new_items_description_vs_title", "new_items_description_vs_image")
GRAPH_FINDING_SUFFIX = "_description_vs_title"

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


def is_confirmatory(finding_id: str) -> bool:
    """Whether a finding belongs to the confirmatory family (:data:`CONFIRMATORY_FIXED` and each multimodal
    recommender's description-vs-title finding)."""
    return finding_id in CONFIRMATORY_FIXED or finding_id.endswith(GRAPH_FINDING_SUFFIX)


@dataclass
class Finding:
    """One of the study's questions, answered by a paired comparison on test (:func:`vlm4rec.stats.paired_tests`).

    ``seeds``: (method's, against's) training seeds; ``p``: the unadjusted paired-bootstrap p (NaN when
    untested), ``p_at_floor``: it is the bootstrap's resolution bound; ``verdict_blocked_by``: why it was not
    tested, empty otherwise; ``resampling``: what the interval resamples; ``p_holm`` and ``family_size``: set by
    :func:`holm_across` for a confirmatory finding (NaN and 0 for an exploratory one)."""

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
    p_at_floor: bool = False
    resampling: str = USER_RESAMPLING
    family_size: int = 0

    @property
    def confirmatory(self) -> bool:
        return is_confirmatory(self.id)

    @property
    def verdict(self) -> str:
        """What the numbers allow: not tested (why); no clear difference (the unadjusted CI holds 0; against
        chance: "not distinguishable from chance"); a direction only where the CI excludes 0, and for a
        confirmatory finding only where the Holm p is below :data:`SIGNIFICANCE` too (otherwise "not
        significant after Holm over m = N"); an exploratory direction is labelled unadjusted."""
        if self.verdict_blocked_by:
            return f"not tested ({self.verdict_blocked_by})"
        if not (self.ci_low > 0 or self.ci_high < 0):
            return "not distinguishable from chance" if self.against == CHANCE else "no clear difference"
        direction = "yes" if self.difference > 0 else "no, it is worse"
        if not self.confirmatory:
            return f"{direction} (exploratory, unadjusted)"
        if self.p_holm < SIGNIFICANCE:
            return direction
        return f"not significant after Holm over m = {self.family_size}"

    @property
    def answer(self) -> str:
        """The finding in words: the verdict, the difference with its unadjusted 95% CI and what it resamples,
        the unadjusted p and, for a confirmatory finding, the Holm p over its family."""
        numbers = (f"{self.method} - {self.against} = {self.difference:+.4f} {self.metric} "
                   f"[unadjusted 95% CI {self.ci_low:+.4f}, {self.ci_high:+.4f}; resampling {self.resampling}]")
        if not self.verdict_blocked_by:
            numbers += f", {p_statement(self.p, self.p_at_floor)}"
            numbers += (f", Holm over m = {self.family_size}: {p_statement(self.p_holm, self.p_at_floor)}"
                        if self.confirmatory else " (exploratory, unadjusted)")
        return (f"{self.verdict}: {numbers}, {self.n_users:,} users ({self.users}), "
                f"{self.seeds[0]} vs {self.seeds[1]} seed(s)")


def compare(fid: str, question: str, per_user: pd.DataFrame, method: str, against: str, metric: str,
            users: str, evaluation: EvalParams) -> Finding | None:
    """Paired comparison of two families in a per-user table (columns method, seed, user_idx, metric);
    None when the table holds no user of both."""
    pair = per_user[per_user["method"].isin([method, against])]
    if set(pair["method"]) != {method, against}:
        return None
    row = paired_tests(pair, against, metric, evaluation.bootstrap_resamples, evaluation.seed).iloc[0]
    return finding_from_row(fid, question, users, row)


def finding_from_row(fid: str, question: str, users: str, row: Mapping) -> Finding:
    """A :class:`Finding` from one row of :func:`vlm4rec.stats.paired_tests` (or a stage's record of one)."""
    return Finding(fid, question, str(row["method"]), str(row["reference"]), str(row["metric"]), users,
                   int(row["n_users"]), (int(row["n_seeds"]), int(row["n_seeds_reference"])),
                   float(row["mean_diff"]), float(row["diff_ci_low"]), float(row["diff_ci_high"]),
                   float("nan") if row["p"] is None else float(row["p"]), str(row["verdict_blocked_by"]),
                   p_at_floor=bool(row["p_at_floor"]), resampling=str(row["resampling"]))


def holm_across(found: Sequence[Finding]) -> None:
    """Set each confirmatory finding's ``p_holm`` and ``family_size``: Holm across the confirmatory findings
    that were tested (an untested one has no p and is not in the family); exploratory ones keep NaN."""
    family = [f for f in found if f.confirmatory]
    for finding, p in zip(family, holm_where_tested([f.p for f in family])):
        finding.p_holm = float(p)
        finding.family_size = sum(not np.isnan(f.p) for f in family)


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


def new_test_items(prepared: PreparedData) -> np.ndarray:
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
             prepared: PreparedData, graph_cells: Mapping[str, GraphCellParams] | None = None,
             chance: ChanceReference | None = None, new_items: Sequence[Finding] = ()) -> list[Finding]:
    """The study's questions, each a paired test on test users; Holm across the confirmatory ones
    (:func:`is_confirmatory`), the rest exploratory.

    Which fusion and which single representation are compared is decided on validation; inside each
    multimodal recommender the description + image cell is compared with the title + image cell. With
    ``chance``, the description, the title and the image are each compared with chance; ``new_items``: the
    new-item stage's findings (:func:`new_item_finding`), which join the family here."""
    metric, description, title, image = params.metric, params.description, params.title, params.image
    per_user = per_user_with_chance(results, chance)
    present = families(results)
    out: list[Finding | None] = [
        compare("description_vs_image", "Do grounded descriptions beat raw visual features?", per_user,
                description, image, metric, "all test users", evaluation),
        compare("description_vs_title", "Do grounded descriptions beat the title?", per_user,
                description, title, metric, "all test users", evaluation)]
    fusions = [f for f in present if is_kind(f, "fusion")]
    singles = [r for r in representations if r in present]
    if fusions:
        best_fusion = best_by_validation(results, fusions, evaluation.select_metric)
        out.append(compare("description_vs_fusion", "Do grounded descriptions beat the content fusion "
                           "(chosen on validation)?", per_user, description, best_fusion, metric,
                           "all test users", evaluation))
    if fusions and singles:
        best_single = best_by_validation(results, singles, evaluation.select_metric)
        out.append(compare("fusion_vs_best_single", "Does the best content fusion beat the best single "
                           "representation (both chosen on validation)?", per_user, best_fusion, best_single,
                           metric, "all test users", evaluation))
    for model, (with_description, with_title) in graph_pairs(graph_cells or {}, description, title, image).items():
        if {with_description, with_title} <= set(present):
            out.append(compare(f"{model}{GRAPH_FINDING_SUFFIX}", f"Does the grounded description help "
                               f"{CATALOGUE[model].display} "
                               "(description + image against title + image)?", per_user, with_description,
                               with_title, metric, "all test users", evaluation))
    out += list(new_items)
    hybrid = hybrid_method(description)
    if hybrid in present and "ease" in present:
        out.append(compare("hybrid_vs_ease", "Do grounded descriptions add to collaborative filtering "
                           f"({hybrid} against EASE^R)?", per_user, hybrid, "ease", metric, "all test users",
                           evaluation))
    if chance is not None:
        out += [compare(f"{name}_vs_chance", f"Does {name} rank better than chance (a uniformly random ranking "
                        "of the same candidates)?", per_user, name, CHANCE, metric, "all test users", evaluation)
                for name in (description, title, image)]
    k = params.slice_k
    new = new_test_items(prepared)
    lengths = history_lengths(prepared.interactions)
    short_users = lengths.index[lengths <= params.short_history].to_numpy()
    for against in (title, image):
        new_table = restricted_per_user(results, [description, against], prepared, items=new, k=k)
        out.append(compare(f"description_vs_{against}_cold_items",
                           f"Do descriptions beat {against} on cold test items?", new_table, description,
                           against, f"recall@{k}", "users with a cold test item; recall over those items", evaluation))
        short_table = restricted_per_user(results, [description, against], prepared, users=short_users, k=k)
        out.append(compare(f"description_vs_{against}_short_histories",
                           f"Do descriptions beat {against} for users with short histories?", short_table,
                           description, against, f"recall@{k}",
                           f"users with at most {params.short_history} history items", evaluation))
    answered = [finding for finding in out if finding is not None]
    holm_across(answered)
    return answered


NEW_ITEM_QUESTIONS = {"title": "Do grounded descriptions beat the title on new items (ranked among the new items)?",
                      "image": "Do grounded descriptions beat the image on new items (ranked among the new items)?"}


def new_item_findings_of(records: Sequence[Mapping], params: FindingsParams) -> list[Finding]:
    """The confirmatory new-item findings from the new-item stage's records of its comparisons among the new
    items (:func:`vlm4rec.cold_start.new_item_findings`, two-way bootstrap): the description against the title
    and the image, where they were compared."""
    against = {params.title: "title", params.image: "image"}
    return [finding_from_row(f"new_items_description_vs_{against[r['reference']]}",
                             NEW_ITEM_QUESTIONS[against[r["reference"]]], "test users with a new test item; "
                             "recall over the new items", r)
            for r in records if r["method"] == params.description and r["reference"] in against]


@dataclass(frozen=True)
class ModelComparison:
    """Inside one multimodal recommender: its description + image cell minus its title + image cell, on the
    headline metric over all test users (``overall``: the confirmatory finding, Holm over the family) and on
    recall over the cold test items (``cold``: exploratory, unadjusted; None when no user has one)."""

    model: str
    cells: tuple[str, str]
    overall: Finding
    cold: Finding | None


def graph_comparisons(results: Results, evaluation: EvalParams, params: FindingsParams,
                      graph_cells: Mapping[str, GraphCellParams], prepared: PreparedData,
                      found: Sequence[Finding]) -> list[ModelComparison]:
    """Does the grounded description help a multimodal recommender? One :class:`ModelComparison` per model
    with a confirmatory finding in ``found`` (:func:`findings`; the same numbers and Holm p), plus its
    exploratory comparison on the cold test items (paired bootstrap over users and both cells' seeds)."""
    by_id = {f.id: f for f in found}
    pairs = graph_pairs(graph_cells, params.description, params.title, params.image)
    pairs = {m: p for m, p in pairs.items()
             if f"{m}{GRAPH_FINDING_SUFFIX}" in by_id and set(p) <= set(families(results))}
    new = new_test_items(prepared)
    compared = []
    for model, cells in pairs.items():
        new_users = restricted_per_user(results, list(cells), prepared, items=new, k=params.slice_k)
        on_new = compare(f"{model}_cold_items", "", new_users, *cells, f"recall@{params.slice_k}", "", evaluation)
        compared.append(ModelComparison(model, cells, by_id[f"{model}{GRAPH_FINDING_SUFFIX}"], on_new))
    return compared


def p_floor_note(found: Sequence[Finding], n_resamples: int) -> str | None:
    """A caveat when the bootstrap is too coarse for Holm: no p can fall below :func:`vlm4rec.stats.p_floor`,
    so with m tested confirmatory findings the smallest Holm-corrected p is at least m times that; None when
    that is below :data:`SIGNIFICANCE`."""
    tested = sum(f.confirmatory and not np.isnan(f.p) for f in found)
    floor = p_floor(n_resamples)
    if tested * floor < SIGNIFICANCE:
        return None
    return (f"With eval.bootstrap_resamples = {n_resamples:,} no p-value falls below {floor:.4f}, so none of the "
            f"{tested} tested confirmatory findings can reach Holm-corrected p < {SIGNIFICANCE}: raise it for "
            "verdicts.")


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
