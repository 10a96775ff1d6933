"""Sections of params.yaml for tests: validated by the schema's section models, with some keys changed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vlm4rec.config import Section, StudyParams, validate_section

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def typed(dotted: str, raw: dict[str, Any]) -> Any:
    """``raw`` validated as the section at ``dotted`` (``"fusion"``, ``"ground.tagger"``); the cross-section
    rules of the whole file are not checked."""
    model: Any = StudyParams
    for part in dotted.split("."):
        model = model.model_fields[part].annotation
    assert issubclass(model, Section), dotted
    return validate_section(model, raw, tuple(dotted.split(".")))


def section(dotted: str, **changes: Any) -> Any:
    """The repository's params.yaml section at ``dotted`` with ``changes`` applied, validated."""
    raw: Any = RAW
    for part in dotted.split("."):
        raw = raw[part]
    return typed(dotted, raw | changes)
