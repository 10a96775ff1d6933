"""The method catalogue: every family the stages produce is catalogued, each lookup gives its kind, and each
trained model holds the configuration params.yaml is checked against."""
from __future__ import annotations

import numpy as np
import pytest

from vlm4rec import methods
from vlm4rec.config import load_params
from vlm4rec.methods import (CATALOGUE, FREEDOMConfig, cold_start_method, cold_start_parts, family_of, fusion_method,
                             hybrid_method, hybrid_representation,
                             is_kind, of_kind, option_problems)

from study_params import REPO


def test_every_family_the_stages_compute_is_catalogued_with_its_kind() -> None:
    params = load_params(REPO / "params.yaml")
    cells = {name: cell.model for name, cell in params.graph.cells.items()}
    computed = params.computed_methods()
    kinds = {name: family_of(name, params.match.representations, cells).kind
             for names in computed.values() for name in names}
    assert {kinds[name] for name in computed["match"]} == {"profile", "baseline"}
    assert {kinds[name] for name in computed["fuse"]} == {"fusion", "hybrid"}
    assert {kinds[name] for name in computed["graph"]} == {"graph_model"}
    for rep in params.cold_start.fusion_learned:
        assert is_kind(fusion_method(rep), "fusion")


@pytest.mark.parametrize("method, kind", [
    ("title", "profile"), ("ease", "baseline"), ("mostpop", "baseline"), ("fusion_late", "fusion"),
    ("fusion_frequency_filter", "fusion"), ("hybrid_description_image_only_ease", "hybrid"),
    ("freedom-title-image", "graph_model"), ("collective_ease-title", "cold_start_model"),
    ("content_regression-description_image_only", "cold_start_model")])
def test_a_lookup_per_kind(method, kind) -> None:
    found = family_of(method, ["title"], {"freedom-title-image": "freedom"})
    assert found is not None and found.kind == kind
    assert is_kind(method, kind, representations=["title"], graph_models={"freedom-title-image": "freedom"})


def test_names_are_formed_and_resolved_by_the_catalogue_only() -> None:
    assert hybrid_method("title") == "hybrid_title_ease" and hybrid_representation("hybrid_title_ease") == "title"
    assert hybrid_representation("hybrid__ease") is None and hybrid_representation("fusion_late") is None
    assert family_of("fusion_title") is None and family_of("unknown") is None
    assert fusion_method("gating") == "fusion_gating"
    with pytest.raises(ValueError, match="unknown fusion"):
        fusion_method("concat")
    assert of_kind("cold_start_model") == ("content_regression", "dropoutnet", "aldi", "collective_ease",
                                           "additive_ease")
    assert cold_start_method("aldi", "genres") == "aldi-genres"
    assert cold_start_parts("aldi-genres") == ("aldi", "genres")
    assert cold_start_parts("vbpr-title") is None and cold_start_parts("aldi-") is None
    with pytest.raises(ValueError, match="unknown cold-start model"):
        cold_start_method("vbpr", "title")


@pytest.mark.parametrize("model", of_kind("cold_start_model"))
def test_each_cold_start_model_is_catalogued_with_its_class(model) -> None:
    from vlm4rec import coldstart

    implementation = CATALOGUE[model].implementation()
    assert implementation.name == model and coldstart.MODELS[model][0] is implementation


def test_what_each_family_can_score() -> None:
    no_signal = [name for name, family in CATALOGUE.items() if not family.scores_new]
    assert no_signal == ["mostpop", "itemknn_cf", "ease", "lightgcn"]
    assert all(CATALOGUE[name].no_signal.startswith("no signal for new items") for name in no_signal)
    assert all(family.scores_warm for family in CATALOGUE.values())


@pytest.mark.parametrize("model", methods.TRAINED_MODELS)
def test_each_trained_model_holds_its_catalogued_configuration(model) -> None:
    family = CATALOGUE[model]
    implementation = family.implementation()
    assert implementation.name == model and implementation.Config is family.config


def test_a_model_validates_its_options_with_its_configuration() -> None:
    from vlm4rec.multimodal import FREEDOM, VBPR

    model = FREEDOM({"image": np.eye(3, dtype="float32")}, edge_drop=0.5, lr=1)
    assert model.edge_drop == 0.5 and model.l2 == 0.0 and model.layers == 2 and model.lr == 1.0
    assert model.config == FREEDOMConfig(edge_drop=0.5, lr=1)
    assert VBPR({"image": np.eye(3, dtype="float32")}).lr == 0.01
    with pytest.raises(ValueError, match="edge_drop"):
        FREEDOM({"image": np.eye(3, dtype="float32")}, edge_drop=1.5)
    with pytest.raises(ValueError, match="knn"):
        VBPR({"image": np.eye(3, dtype="float32")}, knn_k=3)


def test_option_problems_name_each_key() -> None:
    assert option_problems("smore", {"image_knn_k": 20, "l2": 1e-4}, "graph.x") == []
    assert option_problems("bpr", {}, "graph.x") == [
        "graph.x: 'bpr' is not a trained model of the catalogue (lightgcn, vbpr, freedom, smore)"]
    assert option_problems("lightgcn", {"layers": -1, "device": "cpu"}, "k") == [
        "k.device: not an option params.yaml may set (the device of every model is graph.device)",
        "k.layers = -1: Input should be greater than or equal to 0"]
