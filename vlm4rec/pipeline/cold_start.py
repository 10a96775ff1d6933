"""Cold-start stage: every method that can score a new item, on the strict new-item protocol
(docs/protocol.md, "New items"), ranked among all items and among the test new items.

Scored: mean-profile matching of every representation the embed stage wrote, the weighted late fusion, the
learned fusions of ``cold_start.fusion_learned``, the content + EASE^R hybrids (the EASE^R part scores every
new item 0: no signal for it) and the multimodal recommenders of ``cold_start.graph_cells`` in their new-item
form (``unseen_items="content"``: a new item has no ID parameters and is scored from its content alone), and
the dedicated cold-start recommenders of ``cold_start.models`` (:mod:`vlm4rec.coldstart`), each fed every
representation of ``cold_start.model_content``: the trained ones learn over one LightGCN backbone per seed
(:func:`warm_backbone`), the side-information EASE^R ones use the match stage's chosen EASE^R penalty for
their history part. Methods with no signal for a new item (MostPop, ItemKNN-CF, EASE^R, LightGCN) are
listed, not scored on new items; EASE^R and the LightGCN backbone are scored in the warm and hybrid settings,
as the warm reference. Every fit sees the warm training history only (without the warm test).
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from vlm4rec import coldstart
from vlm4rec.baselines import EASE
from vlm4rec.cold_start import (CANDIDATE_SETS, NEW_ITEM_SETS, WARM_SETS, FittedOnce, NewItemData, new_item_findings,
                                select_and_test_new_items)
from vlm4rec.config import ColdStartParams, EvalParams, FusionParams, GraphParams, ReportParams
from vlm4rec.data import load_prepared
from vlm4rec.evaluation import (Candidate, ChanceReference, EvalSplit, MethodKey, MethodResult, chance_per_user,
                                evaluate)
from vlm4rec.metrics import summarize
from vlm4rec.matching import ProfileRecommender
from vlm4rec.multimodal import candidates as graph_candidates, new_item_options, regime_options
from vlm4rec.fusion_candidates import FusionTrainer, hybrid_candidates, late_fusion_candidates
from vlm4rec.gallery import user_gallery
from vlm4rec.errors import StudyError
from vlm4rec.methods import CATALOGUE, HYBRID, cold_start_method, fusion_method, hybrid_method
from vlm4rec.pipeline.outputs import (EMBEDDINGS_DIR, PLOTS_DIR, PREPARED_DIR, RESULTS_DIR, chosen_ease_l2,
                                      peak_rss_mb, timed)
from vlm4rec.pipeline.new_item_data import chance_references, new_item_data, new_item_split
from vlm4rec.pipeline.new_item_tables import new_item_curves
from vlm4rec.pipeline.stage_metrics import NewItemMetrics
from vlm4rec.stats import PAIRED_COLUMNS
from vlm4rec.tables import family_test_summaries, paired_test_table, test_metrics_json, timing_json
from vlm4rec.representations import load_vectors, representations_with_content
from vlm4rec.training import TrainingOptions

COLD_RESULTS = RESULTS_DIR / "cold_start"
#: The catalogued methods that cannot score a new item, and why (listed in the tables, never scored).
NO_SIGNAL = {name: family.no_signal for name, family in CATALOGUE.items() if not family.scores_new}

Results = dict[str, dict[MethodKey, MethodResult]]


def _merge(into: Results, more: Results) -> None:
    for name, found in more.items():
        into[name] |= found


def run(evaluation: EvalParams, cold_start: ColdStartParams, fusion: FusionParams, graph: GraphParams,
        report: ReportParams) -> tuple[Results, NewItemMetrics, dict[str, ChanceReference]]:
    """Every new-item-capable method, selected on the validation new items and tested in each setting of
    :data:`~vlm4rec.cold_start.CANDIDATE_SETS` (the warm references in the warm and hybrid ones only); results
    under ``data/results/cold_start/<setting>/<method>``, counts, test metrics, chance and the findings
    (unadjusted two-way bootstrap p, on the new-item settings) in ``metrics/cold_start.json``
    (:class:`NewItemMetrics`), Recall@K / NDCG@K curves in ``plots/``; returns the results, the metrics and
    chance per setting."""
    ks, metric = evaluation.ks, evaluation.select_metric
    costs: dict[str, Any] = {}
    check_model_grids(cold_start)
    check_content_names(cold_start, graph)
    with timed(costs, "wall"):
        data, counts = new_item_data(cold_start, evaluation)
        print("new-item protocol:", json.dumps(counts))
        results = score_methods(data, evaluation, cold_start, fusion, graph, COLD_RESULTS)
    chance = chance_references(data, ks)
    findings = {name: json_records(new_item_findings(
        results[name], data.test_targets, report.findings.description, cold_start.metric, chance[name],
        evaluation.bootstrap_resamples, evaluation.seed)) for name in NEW_ITEM_SETS}
    with timed(costs, "split_replicas"):
        replicas = split_replicas(evaluation, cold_start, fusion, graph)
    metrics = NewItemMetrics(counts=counts, metric=cold_start.metric, no_signal=NO_SIGNAL, hybrids=HYBRID.note,
                             methods={name: test_metrics_json(results[name]) for name in CANDIDATE_SETS},
                             chance={name: chance_json(chance[name], metric) for name in CANDIDATE_SETS},
                             findings=findings, model_findings=model_findings(results, data, cold_start, report,
                                                                              evaluation),
                             warm_cost=warm_costs(results, cold_start.metric, evaluation),
                             split_replicas=replicas,
                             cost=costs | {"peak_rss_mb": round(peak_rss_mb(), 1),
                                                              "methods": timing_json(results["all"])})
    metrics.save(NewItemMetrics.path())
    PLOTS_DIR.mkdir(exist_ok=True)
    new_item_curves(metrics).to_csv(PLOTS_DIR / "cold_start_at_k.csv", index=False)
    return results, metrics, chance


def score_methods(data: NewItemData, evaluation: EvalParams, cold_start: ColdStartParams, fusion: FusionParams,
                  graph: GraphParams, out_dir: Path | None) -> Results:
    """Every new-item-capable method of the stage on the split ``data``: selected on its validation new items,
    tested in each setting of :data:`~vlm4rec.cold_start.CANDIDATE_SETS` (the warm references in the warm and
    hybrid ones only); results saved under ``out_dir/<setting>/<method>`` (None: kept in memory only)."""
    ks, metric, seeds = evaluation.ks, evaluation.select_metric, cold_start.seeds
    results: Results = {name: {} for name in CANDIDATE_SETS}

    def unseeded(method: str, grid: list[Candidate]) -> None:
        _merge(results, select_and_test_new_items(method, lambda seed: grid, data, ks, metric, out_dir=out_dir))

    for rep in representations_with_content(EMBEDDINGS_DIR):
        vectors = load_vectors(EMBEDDINGS_DIR, rep, "data/embeddings")
        unseeded(rep, [Candidate({}, lambda v=vectors, r=rep: ProfileRecommender(v, name=r))])
    modalities = {name: load_vectors(EMBEDDINGS_DIR, name, "fusion.modalities") for name in fusion.modalities}
    unseeded(fusion_method("late"), late_fusion_candidates(modalities, fusion.concat_grid_step))
    l2 = chosen_ease_l2()
    for rep in fusion.hybrid_representations:
        vectors = load_vectors(EMBEDDINGS_DIR, rep, "fusion.hybrid_representations")
        unseeded(hybrid_method(rep), hybrid_candidates(vectors, l2, fusion.hybrid_alpha_grid, rep))
    trainer = FusionTrainer(modalities, data, fusion)
    for kind in cold_start.fusion_learned:
        _merge(results, select_and_test_new_items(fusion_method(kind), trainer.candidates_for(kind), data, ks,
                                                  metric, seeds, out_dir))
    for cell in cold_start.graph_cells:
        spec = graph.cells[cell]
        fixed = new_item_options(graph, spec.model, cold_start.content_graph)
        cell_modalities = {name: load_vectors(EMBEDDINGS_DIR, name, f"graph.cells.{cell}.modalities")
                           for name in spec.modalities}
        grid = graph.chosen_scale.grids[spec.model]
        _merge(results, select_and_test_new_items(
            cell, lambda seed, s=spec, m=cell_modalities, g=grid: graph_candidates(s.model, m, g, fixed, seed),
            data, ks, metric, seeds, out_dir))
    backbone = warm_backbone(graph, cold_start.backbone_epochs)
    for model in cold_start.models:
        grid = cold_start.model_grids.get(model, {})
        for rep in cold_start.model_content:
            content = load_vectors(EMBEDDINGS_DIR, rep, "cold_start.model_content")
            if model in coldstart.TRAINED:
                _merge(results, select_and_test_new_items(
                    cold_start_method(model, rep),
                    lambda seed, m=model, c=content, g=grid: coldstart.candidates(
                        m, c, g, {"device": graph.device}, seed, backbone(seed)),
                    data, ks, metric, seeds, out_dir))
            else:
                unseeded(cold_start_method(model, rep), coldstart.candidates(model, content, grid, {"l2": l2}))
    # the warm references (no signal for new items): tested on the warm and hybrid settings only
    _merge(results, select_and_test_new_items("ease", lambda seed: [Candidate({"l2": l2}, lambda: EASE(l2=l2))],
                                              data, ks, metric, None, out_dir, WARM_SETS))
    _merge(results, select_and_test_new_items(
        "lightgcn", lambda seed: [Candidate({"epochs": cold_start.backbone_epochs}, lambda: backbone(seed))],
        data, ks, metric, seeds, out_dir, WARM_SETS))
    return results


def warm_backbone(graph: GraphParams, epochs: int) -> Callable[[int], FittedOnce]:
    """seed -> the LightGCN backbone of the trained cold-start models (the graph stage's LightGCN: its regime,
    its grid's first point, ``epochs`` epochs, new items without ID parameters), fitted once per seed on the
    warm history and shared by every model, representation and grid point of that seed."""
    options = {key: value for key, value in regime_options(graph, "lightgcn").items() if key != "device"}
    point = {key: values[0] for key, values in graph.chosen_scale.grids.get("lightgcn", {}).items()}

    @cache
    def fitted(seed: int) -> FittedOnce:
        return FittedOnce(coldstart.default_backbone(TrainingOptions(device=graph.device, seed=seed),
                                                     **options | point | {"epochs": epochs}))
    return fitted


def check_model_grids(cold_start: ColdStartParams) -> None:
    """Every grid point of ``cold_start.model_grids`` of a model in ``cold_start.models`` validated against the
    model's configuration, before any training: one line naming the key."""
    for model in cold_start.models:
        for point in itertools.product(*(grid := cold_start.model_grids.get(model, {})).values()):
            try:
                coldstart.MODELS[model][1](**dict(zip(grid, point)))
            except ValueError as err:
                raise StudyError(f"cold_start.model_grids.{model}: {dict(zip(grid, point))} is not a "
                                 f"configuration of {model}: {err}".replace("\n", " ")) from None


def check_content_names(cold_start: ColdStartParams, graph: GraphParams) -> None:
    """Every representation the stage feeds a model (``cold_start.model_content``, the modalities of
    ``cold_start.graph_cells``) is one the embed stage wrote with content of its own, before any training: a
    :class:`~vlm4rec.errors.StudyError` naming the key (:func:`~vlm4rec.representations.load_vectors`)."""
    named = {"cold_start.model_content": cold_start.model_content,
             **{f"graph.cells.{cell}.modalities": graph.cells[cell].modalities for cell in cold_start.graph_cells}}
    for key, names in named.items():
        for name in names:
            load_vectors(EMBEDDINGS_DIR, name, key)


def model_findings(results: Results, data: NewItemData, cold_start: ColdStartParams, report: ReportParams,
                   evaluation: EvalParams) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Does the grounded description help each dedicated cold-start model? Per model of ``cold_start.models``
    (those fed the description, ``report.findings.description``) and new-item setting: the model fed the
    description minus the same model fed each other representation of ``cold_start.model_content``
    (:func:`~vlm4rec.cold_start.new_item_findings`: the two-way bootstrap, unadjusted p)."""
    description = report.findings.description
    if description not in cold_start.model_content:
        return {}
    out = {}
    for model in cold_start.models:
        own = {cold_start_method(model, rep) for rep in cold_start.model_content}
        out[model] = {name: json_records(new_item_findings(
            {key: result for key, result in results[name].items() if key.family in own}, data.test_targets,
            cold_start_method(model, description), cold_start.metric, None, evaluation.bootstrap_resamples,
            evaluation.seed)) for name in NEW_ITEM_SETS}
    return out


def split_replicas(evaluation: EvalParams, cold_start: ColdStartParams, fusion: FusionParams,
                   graph: GraphParams) -> dict[str, dict[str, Any]]:
    """The field's random item split, once per seed of ``cold_start.split_seeds`` (``cold_share`` of the items
    with a positive drawn at random, ``val_share`` of them for validation): the protocol's counts, chance's test
    macro metrics and, per ``cold_start.replica_methods``, those of the methods re-run on it. ``profiles``: the
    profile matching of each representation of ``cold_start.model_content`` in the new-item settings (a profile
    has nothing to select, so each is fitted once and tested). ``all``: every method of the stage
    (:func:`score_methods`), each selected on the replica's own validation new items, in every setting; a seeded
    method's metrics are the mean over its seeds. Keyed ``random@seed<seed>``; nothing is saved under
    ``data/results``."""
    every_method = cold_start.replica_methods == "all"
    sets = CANDIDATE_SETS if every_method else NEW_ITEM_SETS
    profiles = {} if every_method else {
        rep: ProfileRecommender(load_vectors(EMBEDDINGS_DIR, rep, "cold_start.model_content"), name=rep)
        for rep in cold_start.model_content}
    out = {}
    for seed in cold_start.split_seeds:
        data, counts = new_item_data(cold_start.model_copy(update={"variant": "random", "seed": seed}), evaluation)
        splits = {name: data.with_candidates(name).test() for name in sets}
        if every_method:
            scored = score_methods(data, evaluation, cold_start, fusion, graph, None)
            methods = {name: family_test_summaries(scored[name]) for name in splits}
        else:  # a profile has nothing to select: fitted on each split's warm history and tested
            methods = {name: {rep: summarize(evaluate(profile, split, evaluation.ks)[1])
                              for rep, profile in profiles.items()} for name, split in splits.items()}
        chance = {name: summarize(chance_per_user(split, evaluation.ks)) for name, split in splits.items()}
        out[f"random@seed{seed}"] = {"counts": counts, "methods": methods, "chance": chance}
    return out


#: The warm reference each method's warm cost is measured against: the cold-start models' backbone.
WARM_REFERENCE = "lightgcn"


def warm_costs(results: Results, metric: str, evaluation: EvalParams) -> dict[str, list[dict[str, Any]]]:
    """What each method's new-item ability costs on the catalogue: per warm setting (warm, hybrid), each
    method minus the LightGCN backbone on ``metric`` over the same users (:func:`vlm4rec.tables.paired_test_table`:
    the paired bootstrap over users and both arms' seeds, unadjusted p, exploratory)."""
    out = {}
    for name in WARM_SETS:
        long, _ = paired_test_table(results[name], [WARM_REFERENCE], [metric], evaluation)
        out[name] = json_records(long[[c for c in PAIRED_COLUMNS if c in long]]) if not long.empty else []
    return out


def chance_json(chance: ChanceReference, select_metric: str) -> dict[str, Any]:
    """Chance's entry of the stage's metrics, shaped as a method's (test macro metrics and the validation
    selection metric), so the report's new-item table orders it like one."""
    return {"test": chance.test_summary(), "validation": {select_metric: chance.val_summary()[select_metric]}}


def json_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``table`` for a metrics file: an untested p is null, not NaN (which JSON lacks)."""
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def gallery_rows(results: dict[MethodKey, MethodResult], methods: list[str], cold_start: ColdStartParams,
                 n_users: int, seed: int) -> list[tuple[str, list[str | None], list[str]]]:
    """:func:`~vlm4rec.gallery.user_gallery` on the new-item protocol: a few test users' latest
    warm history posters and each method's top new items (HIT = one of the user's test new items)."""
    prepared = load_prepared(PREPARED_DIR)
    inter = new_item_split(prepared.interactions, cold_start)[0]
    warm_and_test = replace(prepared, interactions=inter[inter["split"].isin(["train", "test"])])
    return user_gallery(results, methods, warm_and_test, n_users=n_users, seed=seed)
