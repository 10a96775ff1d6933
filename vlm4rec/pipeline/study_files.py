"""The result folders and per-cell metrics files of exactly the study params.yaml describes, which the report
reads and nothing else.

A result folder (one holding ``chosen.json`` under ``data/results/{match,fusion,graph}``) or a cell's metrics
file (``metrics/graph``, ``metrics/ablations``) that params.yaml does not name was left by an earlier study (a
method, cell, seed or ablation value since removed): it is ignored and listed as such. One that params.yaml
names but that is missing stops the report with a message naming it and the stage that writes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm4rec.config import AblationParams, StudyParams
from vlm4rec.errors import StudyError
from vlm4rec.evaluation import MethodKey
from vlm4rec.pipeline.outputs import METRICS_DIR, RESULTS_DIR
from vlm4rec.stage_outputs import remedy

#: data/results folders of the stages whose results the report reads, by the method group that lands there.
RESULT_FOLDERS = {"match": "match", "fuse": "fusion", "graph": "graph"}
CELL_METRICS = ("graph", "ablations")


def cell_name(cell: dict[str, Any]) -> str:
    """Directory / metrics name of one grid cell or configuration, e.g. ``description-image_only-mean-all``."""
    return "-".join(str(cell[k]) for k in ("representation", "arm", "aggregation", "cap") if k in cell)


def cell_metrics_files(ablation: AblationParams) -> list[Path]:
    """The metrics file of every matrix cell ``ablation`` names (``ablate_grounded``'s representation x arm,
    ``ablate_ungrounded``'s representation): what the ablations and report stages read, and nothing else."""
    cells = [{"representation": r, "arm": a} for r in ablation.grounded for a in ablation.arms]
    cells += [{"representation": r} for r in ablation.ungrounded]
    return [METRICS_DIR / "ablations" / f"{cell_name(cell)}.json" for cell in cells]


@dataclass(frozen=True)
class StudyFiles:
    """What params.yaml names: result folders (one per method, or per seed of a seeded one) and cells'
    metrics files."""

    results: tuple[Path, ...]
    metrics: tuple[Path, ...]

    @classmethod
    def of(cls, params: StudyParams) -> "StudyFiles":
        """The files of ``params``' study (reads ``match.representations``, ``baselines.methods``, ``fusion``'s
        ``learned``, ``seeds`` and ``hybrid_representations``, ``graph.cells`` and the chosen scale's ``seeds``,
        and ``ablation``'s ``grounded``, ``ungrounded`` and ``arms``)."""
        seeded = {f"fusion_{kind}": params.fusion.seeds for kind in params.fusion.learned}
        seeded |= {cell: params.graph.chosen_scale.seeds for cell in params.graph.cells}
        results = []
        for group, methods in params.computed_methods().items():
            for method in methods:
                base = RESULTS_DIR / RESULT_FOLDERS[group]
                folder = base / method if group == "graph" else base  # a graph cell's seeds: one level down
                keys = [MethodKey(method, seed) for seed in seeded[method]] if method in seeded else [MethodKey(method)]
                results += [folder / key.name for key in keys]
        metrics = [METRICS_DIR / "graph" / f"{cell}.json" for cell in params.graph.cells]
        return cls(tuple(results), (*metrics, *cell_metrics_files(params.ablation)))

    @property
    def ablation_metrics(self) -> list[Path]:
        """The ablation matrix cells' metrics files."""
        return [path for path in self.metrics if path.parent.name == "ablations"]

    def check_present(self) -> None:
        """A :class:`StudyError` naming each named folder or file that is missing and the stage that writes it."""
        missing = [f"{path} ({remedy(path, 'first')})" for path in self.results if not (path / "chosen.json").is_file()]
        missing += [f"{path} ({remedy(path, 'first')})" for path in self.metrics if not path.is_file()]
        if missing:
            raise StudyError(f"the study params.yaml describes lacks {len(missing)} output(s): {'; '.join(missing)}")

    def ignored(self) -> list[str]:
        """The result folders and cells' metrics files on disk that params.yaml does not name, sorted."""
        found = {path.parent for folder in RESULT_FOLDERS.values()
                 for path in (RESULTS_DIR / folder).rglob("chosen.json")}
        found |= {path for folder in CELL_METRICS for path in (METRICS_DIR / folder).glob("*.json")}
        return sorted(str(path) for path in found - set(self.results) - set(self.metrics))
