"""The name rule for everything that becomes a stage name, a file name or part of a command."""
from __future__ import annotations

import pytest
import yaml

from vlm4rec.config import validate_params
from vlm4rec.errors import StudyError
from vlm4rec.names import MAX_LENGTH, name_problem
from study_params import REPO


@pytest.mark.parametrize("name", [".", "..", "-rf", ".hidden", "a/b", "../data", "a b", "tab\there", "it's", 'say"',
                                  "x;touch PWNED;echo", "$(id)", "`id`", "a|b", "a&b", "a>b", "a*", "", "é"])
def test_dangerous_names_are_refused(name: str) -> None:
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", ["lightgcn", "vbpr-title_description-image", "description_image_only", "v1.2",
                                  "_private", "0", "a" * MAX_LENGTH])
def test_ordinary_names_pass(name: str) -> None:
    assert name_problem(name) is None


def test_a_name_over_the_length_limit_is_refused() -> None:
    assert "65 characters long" in name_problem("a" * (MAX_LENGTH + 1))


@pytest.mark.parametrize("section, key, value", [
    ("graph", "cells", {"..": {"model": "lightgcn", "modalities": []}}),
    ("ablation", "ungrounded", ["title", "x;touch PWNED;echo"]),
    ("match", "representations", ["title", "../title"]),
    ("robustness", "representations", ["-title"]),
    ("fusion", "hybrid_representations", ["title image"]),
])
def test_params_yaml_refuses_a_dangerous_name_wherever_it_becomes_a_path(section: str, key: str, value) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw[section][key] = value
    with pytest.raises(StudyError, match=rf"{section}\.{key}.*may hold only letters"):
        validate_params(raw)
