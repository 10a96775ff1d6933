"""The contract between the fetch and prepare stages: ``data/raw/source.json``, the manifest the fetch stage
writes (the chosen source's files and the ``data.<source>`` keys it ran with), and the loader arguments the
prepare stage reads from it. A shared helper of both stages, not a stage."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlm4rec.config import DataParams
from vlm4rec.errors import StudyError
from vlm4rec.pipeline.outputs import RAW_DIR
from vlm4rec.stage_outputs import read_output

SOURCE_MANIFEST = RAW_DIR / "source.json"


def source_keys(data: DataParams) -> dict[str, Any]:
    """The chosen source's keys that are set (``data.<source>``, nulls left out)."""
    return {k: v for k, v in data.source_params.model_dump().items() if v is not None}


def load_source_manifest(path: str | Path = SOURCE_MANIFEST) -> dict[str, Any]:
    """What the fetch stage recorded; a StudyError when it has not run."""
    return read_output(path, lambda file: json.loads(file.read_text()))


def adapter_keys(data: DataParams, manifest_path: str | Path = SOURCE_MANIFEST) -> dict[str, Any]:
    """The keyword arguments for ``load_source(data.source, ...)``: MovieLens-1M's resolved root and
    posters folder from the manifest, other sources' own non-null keys, and ``images_outside_folder``.

    The manifest must come from a fetch run with the current ``data.<source>`` keys (it records them): a
    changed root is a StudyError, never a silent read of the folder the last fetch found."""
    source = data.source
    manifest = load_source_manifest(manifest_path)
    if manifest["source"] != source:
        raise StudyError(f"{manifest_path} records source {manifest['source']!r} but data.source is "
                         f"{source!r}: run the fetch stage first (dvc repro fetch)")
    keys = source_keys(data)
    recorded = manifest.get("keys", {})
    changed = sorted(k for k in keys.keys() | recorded.keys() if keys.get(k) != recorded.get(k))
    if changed:
        raise StudyError("; ".join(f"data.{source}.{k} is {keys.get(k)!r} but the fetch stage last ran with "
                                   f"{recorded.get(k)!r}" for k in changed)
                         + ": run the fetch stage first (dvc repro fetch), so that prepare reads these files")
    policy = {"images_outside_folder": data.images_outside_folder}
    if source == "movielens_1m":
        return {"root": manifest["root"], "posters_dir": manifest["posters_dir"]} | policy
    return keys | policy
