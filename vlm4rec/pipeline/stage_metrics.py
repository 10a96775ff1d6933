"""The schema of the stage metrics the report reads: one pydantic model per metrics file, written by its stage
with :meth:`StageMetrics.save` and read back by the report with :meth:`StageMetrics.load`, so that a renamed
or missing field fails where the file is written or read (naming the field), not inside a report table.

The files stay what :func:`vlm4rec.pipeline.outputs.write_json` writes (sorted keys): a model holds the same
keys and values as the dictionary the stage wrote before it was typed. A shared helper of the stages, not a
stage.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from vlm4rec.pipeline.outputs import METRICS_DIR, write_json
from vlm4rec.stage_outputs import read_output

Metrics = TypeVar("Metrics", bound="StageMetrics")


class StageMetrics(BaseModel):
    """A metrics file's content: unknown or missing keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def as_json(self) -> dict[str, Any]:
        """The content as written (plain dictionaries and lists)."""
        return self.model_dump()

    def save(self, path: str | Path) -> None:
        write_json(path, self.as_json())

    @classmethod
    def load(cls: type[Metrics], path: str | Path) -> Metrics:
        """The file's content; a missing, unparsable or off-schema file is a StudyError naming it and its stage."""
        return read_output(path, lambda file: cls.model_validate(json.loads(file.read_text())))


class MethodMetrics(StageMetrics):
    """One method's entry (:func:`vlm4rec.tables.test_metrics_json`): test macro metrics, the validation
    selection metric, catalogue coverage and the chosen configuration."""

    test: dict[str, Any]
    validation: dict[str, Any]
    coverage: dict[str, Any]
    chosen: dict[str, Any]


class GraphTraining(StageMetrics):
    """The first seed's selection run of a graph cell."""

    best_epoch: int
    epochs_run: int
    stopped_early: bool
    validation_curve: list[Any]
    grid_size: int


class GraphCost(StageMetrics):
    wall_s: float
    peak_rss_mb: float
    methods: dict[str, Any]


class GraphCellMetrics(StageMetrics):
    """``metrics/graph/<cell>.json``: a graph cell's model, modalities, scale and regime, per-seed test
    metrics, its selection run and its cost."""

    model: str
    modalities: list[str]
    scale: str
    regime: str
    methods: dict[str, MethodMetrics]
    training: GraphTraining
    cost: GraphCost

    @staticmethod
    def path(cell: str) -> Path:
        return METRICS_DIR / "graph" / f"{cell}.json"


class ChanceMetrics(StageMetrics):
    """Chance's entry (:func:`vlm4rec.pipeline.cold_start.chance_json`), shaped as a method's: test macro
    metrics and the validation selection metric."""

    test: dict[str, Any]
    validation: dict[str, Any]


class NewItemMetrics(StageMetrics):
    """``metrics/cold_start.json``: the new-item protocol's counts, the methods listed as having no signal for a
    new item, the hybrids' note, per candidate set the test metrics of each result, chance's (shaped as a
    method's: test macro metrics and the validation selection metric) and the findings, and the stage's cost."""

    counts: dict[str, int]
    no_signal: dict[str, str]
    hybrids: str
    methods: dict[str, dict[str, MethodMetrics]]
    chance: dict[str, ChanceMetrics]
    findings: dict[str, list[dict[str, Any]]]
    cost: dict[str, Any]

    @staticmethod
    def path() -> Path:
        return METRICS_DIR / "cold_start.json"
