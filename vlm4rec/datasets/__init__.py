"""Source adapters and their registry: every adapter returns a :class:`vlm4rec.data.RawDataset`.

``load_source(name, **keys)`` looks the adapter up in :data:`SOURCES` and calls it with the keyword
arguments of that source (e.g. ``root=...``, ``posters_dir=...`` for ``movielens_1m``), as given by
``params.yaml: data``. A new source is one module under ``vlm4rec/datasets/``, one line in :data:`SOURCES`
mapping its name to its loader, one in :data:`INPUT_PATH_KEYS` naming the loader's arguments that are
paths, and its keys in the parameter schema (:mod:`vlm4rec.config`: a ``*Params`` section, a ``DataParams``
field, its name in ``DataParams.source`` and ``SOURCE_KEYS``) (MovieLens-1M is found or downloaded by :mod:`vlm4rec.datasets.movielens_fetch`).
"""
from __future__ import annotations

from typing import Callable

from vlm4rec.data import RawDataset
from vlm4rec.datasets.amazon import load_amazon2023
from vlm4rec.datasets.macridvae import load_align_macridvae
from vlm4rec.datasets.mmrec import load_mmrec
from vlm4rec.datasets.movielens import load_movielens_1m

SOURCES: dict[str, Callable[..., RawDataset]] = {
    "movielens_1m": load_movielens_1m,
    "amazon2023": load_amazon2023,
    "align_macridvae": load_align_macridvae,
    "mmrec": load_mmrec,
}

#: The keyword arguments of each loader that name a file or folder it reads: the fetch stage fingerprints
#: them so that ``prepare`` re-runs when they change.
INPUT_PATH_KEYS: dict[str, tuple[str, ...]] = {
    "amazon2023": ("reviews_path", "meta_path", "images_dir"),
    "align_macridvae": ("root", "meta_path", "images_dir"),
    "mmrec": ("root", "meta_csv", "images_dir"),
}


def load_source(source: str, **keys) -> RawDataset:
    """Load the raw dataset of ``source`` with its adapter's keyword arguments."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; known: {sorted(SOURCES)}")
    return SOURCES[source](**keys)
