"""Fetch stage: make the chosen source's raw files available and record them in ``data/raw/source.json``.

``prepare`` depends on that manifest, not on a raw folder. So no stage depends on the MovieLens folder
when another source is chosen, and any change of the files ``prepare`` reads (a replaced poster
included) changes the manifest and re-runs ``prepare``. The stage runs on every ``dvc repro``
(``always_changed``), so the path without a download is kept cheap. The manifest holds only locations
and fingerprints, never times or download counts, so that an unchanged source gives the same bytes.

The manifest also records the ``data.<source>`` keys the stage ran with, so that ``prepare`` refuses a
manifest made for other keys (:func:`adapter_keys`).

- ``movielens_1m``: :func:`vlm4rec.datasets.movielens_fetch.resolve_movielens_1m` finds the official
  files (or downloads them on a fresh machine). The manifest holds the resolved root, size and sha256
  of each ``.dat``, the posters folder with MovieID -> sha256 and size, and the movies without a poster.
  Hashing 25 MB of ``.dat`` and 3,872 posters (54 MB) takes about half a second.
- Other sources are never downloaded here (the Amazon image downloader runs inside their adapter). The
  paths their loader reads (:data:`vlm4rec.datasets.INPUT_PATH_KEYS`) are fingerprinted by size and
  mtime_ns, and a folder by its listing. Their content is not hashed: hashing multi-GB review files on
  every run would take minutes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vlm4rec.config import DataParams
from vlm4rec.datasets import INPUT_PATH_KEYS
from vlm4rec.datasets.movielens_fetch import resolve_movielens_1m
from vlm4rec.errors import StudyError
from vlm4rec.pipeline.outputs import METRICS_DIR, RAW_DIR, timed, write_json
from vlm4rec.stage import exit_on_study_error, run_stage_function
from vlm4rec.stage_outputs import read_output

SOURCE_MANIFEST = RAW_DIR / "source.json"
#: Where MovieLens-1M is downloaded when ``data.movielens_1m.download_dir`` is not set (git-ignored).
DEFAULT_DOWNLOAD_DIR = RAW_DIR / "ml-1m"


def path_fingerprint(path: str | Path) -> dict[str, Any]:
    """A file: path, size, mtime_ns. A folder: path and its regular files' count, total bytes and the sha256
    of their sorted name, size, mtime_ns listing (content not read). Absent: path and ``missing``."""
    path = Path(path)
    if path.is_file():
        info = path.stat()
        return {"path": path.as_posix(), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    if path.is_dir():
        stats = sorted((entry.name, entry.stat()) for entry in os.scandir(path) if entry.is_file())
        listing = "".join(f"{name}\t{info.st_size}\t{info.st_mtime_ns}\n" for name, info in stats)
        return {"path": path.as_posix(), "files": len(stats), "bytes": sum(info.st_size for _, info in stats),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}
    return {"path": path.as_posix(), "missing": True}


def _movielens(keys: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, metrics) of MovieLens-1M, found or downloaded with the ``data.movielens_1m`` keys."""
    files = resolve_movielens_1m(**({"download_dir": DEFAULT_DOWNLOAD_DIR, "posters_dir": None} | keys))
    return files.manifest(), {"release_from": files.release_from, "root": files.root.as_posix(),
                              "counts": files.counts()}


def _other_source(source: str, keys: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, metrics) of a source that is read where it is: its path arguments, fingerprinted."""
    paths = {key: path_fingerprint(keys[key]) for key in INPUT_PATH_KEYS[source] if keys.get(key) is not None}
    return {"paths": paths}, {"counts": {"paths": len(paths),
                                         "paths_missing": sum("missing" in p for p in paths.values())}}


def source_keys(data: DataParams) -> dict[str, Any]:
    """The chosen source's keys that are set (``data.<source>``, nulls left out)."""
    return {k: v for k, v in data.source_params.model_dump().items() if v is not None}


def run(data: DataParams) -> dict[str, Any]:
    """Resolve ``data.source``'s raw files, write :data:`SOURCE_MANIFEST` and ``metrics/fetch.json``
    (counts and wall time), and return the metrics."""
    source = data.source
    keys = source_keys(data)
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        manifest, metrics = _movielens(keys) if source == "movielens_1m" else _other_source(source, keys)
        write_json(SOURCE_MANIFEST, {"source": source, "keys": keys} | manifest)
    metrics = {"source": source} | metrics | {"cost": costs}
    write_json(METRICS_DIR / "fetch.json", metrics)
    return metrics


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


def main() -> None:
    """Stage entry point (``python -m vlm4rec.pipeline.fetch``): params.yaml validated, :func:`run` with the
    ``data`` params the stage declares in ``dvc.yaml``; a StudyError ends the process with its message only
    (exit status 1, no traceback)."""
    def body() -> None:
        metrics = run_stage_function("fetch", run)
        print(f"fetch: {metrics['source']}: {json.dumps(metrics['counts'], sort_keys=True)}, "
              f"{metrics['cost']['wall_s']} s")

    exit_on_study_error(body)


if __name__ == "__main__":
    main()
