"""The params.yaml schema: every bad value is caught at stage start with a message naming key, value and
what is allowed; the documentation generated from the schema is current."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlm4rec import stage
from vlm4rec.config import StudyParams, load_params, markdown_reference, validate_params
from vlm4rec.errors import StudyError

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(dotted: str, value) -> dict:
    params = copy.deepcopy(PARAMS)
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    return params


def test_the_repository_params_are_valid_and_every_key_is_documented() -> None:
    assert isinstance(load_params(REPO / "params.yaml"), StudyParams)

    def undocumented(model, prefix=""):
        for key, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from undocumented(annotation, f"{prefix}{key}.")
            elif not info.description:
                yield prefix + key

    assert list(undocumented(StudyParams)) == []


@pytest.mark.parametrize("key, value, message", [
    ("split.test_ratio", 1.5, "split.test_ratio = 1.5: Input should be less than 1"),
    ("split.test_ratio", -0.1, "split.test_ratio = -0.1: Input should be greater than 0"),
    ("split.val_ratio", 1.5, "split.val_ratio = 1.5: Input should be less than 1"),
    ("split.val_ratio", 0.85, "val_ratio + test_ratio = 1.05 leaves no training share"),
    ("fusion.seeds", [], "fusion.seeds = []: List should have at least 1 item"),
    ("eval.block_size", 0, "eval.block_size = 0: Input should be greater than or equal to 1"),
    ("eval.block_size", -5, "eval.block_size = -5: Input should be greater than or equal to 1"),
    ("profile.aggregation", "recent", "profile.aggregation = 'recent': Input should be 'mean', 'recency' or 'knn_sum'"),
    ("baselines.ease.l2", ["5O0"], "baselines.ease.l2[0] = '5O0': Input should be a valid number"),
    ("baselines.ease.l2", [0], "baselines.ease.l2[0] = 0: Input should be greater than 0"),
    ("eval.select_metric", "ndcg@15", "select_metric 'ndcg@15' must be <metric>@<k> with"),
    ("ablation.arms", ["image_only", "image_caption"], "ablation.arms[1] = 'image_caption': Input should be"),
    ("ablation.caps", ["all", 0], "ablation.caps[1] = 0: Input should be greater than or equal to 1, or Input should be 'all'"),
    ("data.universe", "everything", "data.universe = 'everything': Input should be 'catalogue' or 'interacted'"),
    ("ground.min_success_rate", 1.2, "ground.min_success_rate = 1.2: Input should be less than or equal to 1"),
    ("fusion.concat_grid_step", 0.3, "concat_grid_step 0.3 must divide 1"),
    ("graph.scale", "full", "graph.scale full runs the references' grids in their training regime: set graph.regime "
                            "to paper"),
    ("graph.regime", "slow", "graph.regime = 'slow': Input should be 'fast' or 'paper'"),
    ("graph.training.paper.negatives", "popular", "graph.training.paper.negatives = 'popular': Input should be"),
    ("graph.cells.smore-title-image.modalities", ["title"],
     "cell smore-title-image: smore takes two modalities, image and one text representation"),
])
def test_each_bad_value_names_the_key_the_value_and_what_is_allowed(key, value, message) -> None:
    with pytest.raises(StudyError) as caught:
        validate_params(with_change(key, value))
    assert message in str(caught.value)


@pytest.mark.parametrize("key, value, message", [
    ("graph.training.fast.models.freedom", {"lrr": 0.01},
     "graph.training.fast.models.freedom.lrr: FREEDOM has no option 'lrr'"),
    ("graph.training.paper.models", {"vbpr": {"layers": 2}}, "graph.training.paper.models.vbpr.layers: VBPR has no option"),
    ("graph.training.fast.models.freedom", {"edge_drop": 1.0},
     "graph.training.fast.models.freedom.edge_drop = 1.0: Input should be less than 1"),
    ("graph.training.fast.models.freedom", {"device": "cuda"},
     "graph.training.fast.models.freedom.device: not an option params.yaml may set (the device of every model is "
     "graph.device)"),
    ("graph.training.fast.models", {"smore": {"unseen_items": "content"}},
     "graph.training.fast.models.smore.unseen_items: not an option params.yaml may set"),
    ("graph.default.grids.smore", {"l2": [0.001], "image_knn_k": [10, 0]},
     "graph.default.grids.smore.image_knn_k = 0: Input should be greater than or equal to 1"),
    ("graph.full.grids.lightgcn", {"layers": [], "l2": [0.01]},
     "graph.full.grids.lightgcn.layers: no values (a grid entry needs at least one)"),
    ("graph.default.grids.vbpr", {"l2": [0.01], "knn_k": [10]}, "graph.default.grids.vbpr.knn_k: VBPR has no option"),
    ("graph.default.grids.lightgcn", {"seed": [0, 1]}, "graph.default.grids.lightgcn.seed: not an option params.yaml"),
])
def test_per_model_options_and_grids_are_checked_against_the_model_at_load(key, value, message) -> None:
    """Each bad per-model option stops validation (before any data is read) in one line naming its key."""
    with pytest.raises(StudyError) as caught:
        validate_params(with_change(key, value))
    assert message in str(caught.value)
    assert str(caught.value).count("\n") == 1  # the file's header line, then the one problem


def test_a_grid_number_keeps_the_type_params_yaml_gives_it() -> None:
    """A chosen configuration records a grid value as written (``l2: 100``, not ``100.0``)."""
    params = validate_params(with_change("baselines.ease.l2", [100, 2.5]))
    assert [type(v) for v in params.baselines.ease.l2] == [int, float]
    assert [type(v) for v in params.profile.half_life_grid] == [int] * 4
    assert [type(v) for v in params.baselines.itemknn_cf.shrinkage] == [int, int]


def test_unknown_and_missing_keys_are_named() -> None:
    params = with_change("baselines.ease.l22", [500])
    del params["baselines"]["ease"]["l2"]
    with pytest.raises(StudyError) as caught:
        validate_params(params)
    assert "baselines.ease.l22: unknown key (allowed here: l2)" in str(caught.value)
    assert "baselines.ease.l2: missing (EASE^R L2 penalties tried on validation)" in str(caught.value)
    assert "2 invalid parameters" in str(caught.value)


def test_source_and_backend_keys_must_be_set_when_chosen() -> None:
    with pytest.raises(StudyError, match="data.source is 'mmrec' but data.mmrec.root and name are not set"):
        validate_params(with_change("data.source", "mmrec"))
    with pytest.raises(StudyError, match="ground.backend is 'hf' but ground.hf.model is not set"):
        validate_params(with_change("ground.backend", "hf"))
    urls = with_change("ground.openai.base_url", ["http://a:8000/v1", "http://b:8000/v1"])
    assert validate_params(urls).ground.openai.base_url == ["http://a:8000/v1", "http://b:8000/v1"]


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  source: movielens_1m\n   seed: 0\n")
    with pytest.raises(StudyError, match=r"params.yaml:3:\d+: YAML syntax error"):
        load_params(path)
    with pytest.raises(StudyError, match="no such parameter file"):
        load_params(tmp_path / "absent.yaml")


def test_a_stage_stops_before_any_work_with_the_message_and_no_traceback(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_change("split.test_ratio", 1.5)))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["prepare"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: params.yaml: 1 invalid parameter:\n  - split.test_ratio = 1.5")
    assert "Traceback" not in err and not (tmp_path / "reports").exists()


def test_the_command_line_prints_the_message_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("eval: [\n")
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    done = subprocess.run([sys.executable, "-m", "vlm4rec.stage", "match"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert done.stderr.startswith("ERROR: params.yaml:2:1: YAML syntax error") and "Traceback" not in done.stderr


def test_the_parameter_reference_in_docs_is_generated_from_the_schema() -> None:
    assert (REPO / "docs" / "params.md").read_text() == markdown_reference() + "\n", \
        "docs/params.md is stale: run python -m vlm4rec.config > docs/params.md"


@pytest.mark.parametrize("key, value, message", [
    ("fusion.seeds", [0, 1, 0], "fusion.seeds = [0, 1, 0]: 0 given more than once; a list's values must be distinct"),
    ("graph.default.seeds", [3, 3], "graph.default.seeds = [3, 3]: 3 given more than once"),
    ("graph.default.grids", {"lightgcn": {"lr": [0.05, 0.05]}, "vbpr": {"lr": [0.01]}, "freedom": {"lr": [0.05]},
                             "smore": {"lr": [0.05]}}, "graph.default.grids: 0.05 given more than once"),
    ("eval.device", "gpu", "eval.device = 'gpu': Value error, must be cpu, cuda or cuda:N"),
    ("graph.device", "cuda:x", "graph.device = 'cuda:x': Value error, must be cpu, cuda or cuda:N"),
    ("embed.text_encoder", "no-such-encoder", "embed.text_encoder = 'no-such-encoder': Value error, "
                                              "'no-such-encoder' is not a local directory, an installed model"),
])
def test_repeated_values_devices_and_encoders_are_refused_with_the_key(key, value, message) -> None:
    with pytest.raises(StudyError) as caught:
        validate_params(with_change(key, value))
    assert message.replace("Value error, ", "") in str(caught.value)


def test_a_cuda_device_must_exist_on_this_machine(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StudyError, match=r"eval.device = 'cuda': this machine has 0 CUDA devices \(torch sees none\); "
                                         "use cpu"):
        validate_params(with_change("eval.device", "cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert validate_params(with_change("eval.device", "cuda:1")).eval.device == "cuda:1"
    with pytest.raises(StudyError, match=r"graph.device = 'cuda:2': this machine has 2 CUDA devices \(torch sees "
                                         r"cuda:0 to cuda:1\)"):
        validate_params(with_change("graph.device", "cuda:2"))
    assert validate_params(with_change("graph.device", "auto")).graph.device == "auto"


def test_a_text_encoder_is_a_folder_a_package_a_cached_model_or_a_hub_id_while_online(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    assert validate_params(with_change("embed.text_encoder", str(tmp_path))).embed.text_encoder == str(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert validate_params(with_change("embed.text_encoder", "owner/model")).embed.text_encoder == "owner/model"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(StudyError, match="embed.text_encoder = 'owner/model': 'owner/model' is not a local directory"):
        validate_params(with_change("embed.text_encoder", "owner/model"))


@pytest.mark.parametrize("key, value, message", [
    ("match.reference", "ease_r", "match.reference 'ease_r' is not computed by the match stage"),
    ("match.reference", "fusion_late", "match.reference 'fusion_late' is not computed by the match stage"),
    ("report.findings.description", "description_image_title",
     "report.findings.description 'description_image_title' is not among match.representations"),
    ("report.findings.metric", "ndcg@15", "report.findings.metric 'ndcg@15' must be <metric>@<k>"),
    ("report.references", ["title", "fusion_gating", "graph_lightgcn"],
     "report.references ['graph_lightgcn'] is not computed by the study; computed: ['title', "),
    ("report.slice_methods", ["hybrid_title_meta_ease"], "report.slice_methods ['hybrid_title_meta_ease'] is not"),
])
def test_a_method_named_by_the_match_or_report_keys_must_be_computed(key, value, message) -> None:
    with pytest.raises(StudyError) as caught:
        validate_params(with_change(key, value))
    assert message in str(caught.value)
    computed = validate_params(PARAMS).computed_methods()
    assert computed["fuse"] == ["fusion_late", "fusion_attention", "fusion_gating", "fusion_frequency_filter",
                                "hybrid_title_ease", "hybrid_description_image_only_ease", "hybrid_image_ease"]
    assert validate_params(with_change("report.gallery_methods", ["lightgcn", "hybrid_image_ease"]))


@pytest.mark.parametrize("key, value, message", [
    ("cold_start.fusion_learned", ["gating", "attention"], None),
    ("fusion.learned", ["attention"],
     "cold_start.fusion_learned ['gating'] are not among the fusions fusion.learned trains ['attention']"),
    ("report.findings.slice_k", 15, "report.findings.slice_k 15 is not among eval.ks [5, 10, 20, 50]"),
    ("fusion.modalities", ["description_image_title", "description_other", "title"],
     "fusion.modalities names ['description_other'], whose prompt arm is not among ground.prompt_arms"),
    ("robustness.representations", ["title", "title_description_image_titles"],
     "robustness.representations names ['title_description_image_titles'], whose prompt arm is not among"),
])
def test_the_rules_across_sections_are_checked_at_load(key, value, message) -> None:
    if message is None:
        assert validate_params(with_change(key, value))
        return
    with pytest.raises(StudyError) as caught:
        validate_params(with_change(key, value))
    assert message in str(caught.value)


def test_a_key_given_twice_in_params_yaml_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    path.write_text(text + "eval:\n  seed: 1\n")
    line = len(text.splitlines()) + 1
    with pytest.raises(StudyError, match=rf"params.yaml:{line}:1: .*key 'eval' is given twice in one mapping"):
        load_params(path)
    path.write_text("split:\n  seed: 0\n  seed: 1\n")
    with pytest.raises(StudyError, match=r"params.yaml:3:3: .*key 'seed' is given twice"):
        load_params(path)


def test_the_parameter_reference_lists_every_rule_across_keys() -> None:
    from vlm4rec.config import cross_field_rules

    doc = (REPO / "docs" / "params.md").read_text()
    rules = cross_field_rules()
    assert len(rules) == 16 and all(f"- {rule}" in doc for rule in rules)  # the grid rule is in the cells rule
    assert all(any(phrase in rule for rule in rules)
               for phrase in ("given twice", "at most 64 characters", "never the key itself", "match.reference"))
