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
from typing import Any, ClassVar, TypeVar

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


class StageFileMetrics(StageMetrics):
    """The metrics of a stage that writes one file, ``metrics/<file>``."""

    file: ClassVar[str]

    @classmethod
    def path(cls) -> Path:
        return METRICS_DIR / cls.file


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
    """``metrics/graph/<cell>.json``: a graph cell's model, modalities, scale, regime, optimiser schedule and
    selection protocol, per-seed test metrics, its selection run and its cost."""

    model: str
    modalities: list[str]
    scale: str
    regime: str
    schedule: dict[str, float | int]
    selection: str
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


class NewItemMetrics(StageFileMetrics):
    """``metrics/cold_start.json``: the new-item protocol's counts, the findings' metric, the methods listed as
    having no signal for a new item, the hybrids' note, per setting the test metrics of each result, chance's (shaped as a
    method's: test macro metrics and the validation selection metric) and the findings, per dedicated
    cold-start model and new-item setting its findings (the description fed to it against its other content
    feeds), per warm setting each method's difference from the warm backbone, the random item split's replicas
    (per split seed: counts, chance's and the profiles' test metrics per setting), and the stage's cost."""

    file = "cold_start.json"

    counts: dict[str, int | float]
    metric: str
    no_signal: dict[str, str]
    hybrids: str
    methods: dict[str, dict[str, MethodMetrics]]
    chance: dict[str, ChanceMetrics]
    findings: dict[str, list[dict[str, Any]]]
    model_findings: dict[str, dict[str, list[dict[str, Any]]]]
    warm_cost: dict[str, list[dict[str, Any]]]
    split_replicas: dict[str, dict[str, Any]]
    cost: dict[str, Any]


class PrepareMetrics(StageFileMetrics):
    """``metrics/prepare.json``: the dataset, its item universe, the split protocol applied, the prepared and
    source counts, what preparation dropped, and the stage's cost."""

    file = "prepare.json"

    dataset: str
    universe: str
    split_protocol: str
    counts: dict[str, Any]
    source_counts: dict[str, Any]
    dropped_in_preparation: dict[str, Any]
    cost: dict[str, Any]


class Grounder(StageMetrics):
    """The grounder: its backend, its model and how the method describes it."""

    backend: str
    model: str
    description_of_method: str


class GroundMetrics(StageFileMetrics):
    """``metrics/ground.json``: the grounder (backend, model, how the method describes it), per prompt arm its
    counts and title-mention rate, and the stage's cost."""

    file = "ground.json"

    grounder: Grounder
    arms: dict[str, dict[str, Any]]
    cost: dict[str, Any]


class EmbedMetrics(StageFileMetrics):
    """``metrics/embed.json``: per representation its dimension and coverage counts, the representations
    without content, the image failures, and the stage's cost."""

    file = "embed.json"

    representations: dict[str, dict[str, Any]]
    without_content: list[str]
    image_failures: list[dict[str, Any]]
    cost: dict[str, Any]


class MatchMetrics(StageFileMetrics):
    """``metrics/match.json``: each method's entry and the stage's cost."""

    file = "match.json"

    methods: dict[str, MethodMetrics]
    cost: dict[str, Any]


class UsersWithoutHistory(StageMetrics):
    """A method's test metrics on the test users without a history (empty when there are none), and what its
    lists are for them."""

    test: dict[str, Any]
    lists: str


class RobustnessMethodMetrics(MethodMetrics):
    """A method's entry under the robustness protocol: a method's, plus its test metrics on the users with a
    history and on those without."""

    test_with_history: dict[str, Any]
    cold_start: UsersWithoutHistory


class RobustnessChance(StageMetrics):
    """Chance's test metrics on the users with a history."""

    test_with_history: dict[str, Any]


class RobustnessMetrics(StageFileMetrics):
    """``metrics/robustness.json``: the protocol, each method's entry (a method's, plus its metrics on the test
    users with and without a history), chance on the users with a history, the split's counts, the test
    users' counts, and the stage's cost."""

    file = "robustness.json"

    protocol: str
    methods: dict[str, RobustnessMethodMetrics]
    chance: RobustnessChance
    split: dict[str, Any]
    test_users: dict[str, int]
    cost: dict[str, Any]


class FusionMetrics(StageFileMetrics):
    """``metrics/fusion.json``: each method's entry, each learned fusion run's training summary, and the
    stage's cost."""

    file = "fusion.json"

    methods: dict[str, MethodMetrics]
    training: dict[str, Any]
    cost: dict[str, Any]


class AblationConfiguration(StageMetrics):
    """One configuration of an ablation cell: the cell with its aggregation and cap, the representation file,
    the chosen knobs, the selection metric, validation and test metrics, and its wall time."""

    cell: dict[str, Any]
    representation: str
    chosen: dict[str, Any]
    select_metric: str
    validation: dict[str, Any]
    test: dict[str, Any]
    wall_s: float


class AblationCellMetrics(StageMetrics):
    """``metrics/ablations/<cell>.json``: a row per configuration and the cell's cost."""

    configurations: list[AblationConfiguration]
    cost: dict[str, Any]

    @staticmethod
    def path(cell: str) -> Path:
        return METRICS_DIR / "ablations" / f"{cell}.json"
