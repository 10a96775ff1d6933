"""Item representations the study compares (docs/protocol.md, "Data and item universe"), each a named ``(n_items, d)`` matrix.

Text representations are built in two visible steps: :func:`item_texts` chooses each item's text and
records which items fall back to their title (no image, failed grounding, no metadata), then
:func:`from_texts` encodes them. Image and precomputed features enter through
:func:`from_features`, where an all-zero row means "missing" and stays zero: a missing item is never
scored as if it had a real vector. Every :class:`Representation` carries its coverage, so that results
can report it next to every number.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import numpy as np
import pandas as pd

from vlm4rec.errors import StudyError
from vlm4rec.vectors import coverage_of, normalize_rows
from vlm4rec.stage_outputs import read_output

TextKind = Literal["title", "title_meta", "genres", "description", "title_description"]
TEXT_KINDS: tuple[str, ...] = get_args(TextKind)

_NO_DESCRIPTION_RULE = "items without a grounded description (no image or failed grounding) use their title text"
_NO_TEXT_RULE = "; items with no text at all (no title and nothing else) get no vector (missing, ranked last)"
FALLBACK_RULES = {
    "title": "none: items without a title get no vector (missing, ranked last)",
    "title_meta": "items with no genres/metadata use their title text",
    "genres": "none: items without genres/metadata get no vector (missing, ranked last; never the title)",
    "description": _NO_DESCRIPTION_RULE,
    "title_description": _NO_DESCRIPTION_RULE,
}


@dataclass(frozen=True)
class TextsWithFallback:
    """One text per item (``items`` row order; "" where an item has no text at all), which of them are
    the documented fallback, and which items have nothing to encode (``is_missing``)."""

    texts: list[str]
    is_fallback: np.ndarray
    fallback_rule: str

    @property
    def is_missing(self) -> np.ndarray:
        return np.array([text == "" for text in self.texts], dtype=bool)

    @property
    def n_fallback(self) -> int:
        return int(self.is_fallback.sum())


def _clean(values: pd.Series) -> pd.Series:
    """Strings with surrounding blanks removed; missing values become ""."""
    return values.fillna("").astype(str).str.strip()


def _descriptions_for(items: pd.DataFrame, descriptions: pd.Series | None) -> pd.Series:
    """Description text per ``items`` row ("" where there is none); refuses unknown or repeated items."""
    if descriptions is None:
        raise ValueError("description kinds need `descriptions` (text indexed by item_idx, status ok only)")
    if not descriptions.index.is_unique:
        raise ValueError("descriptions has repeated item_idx values")
    unknown = descriptions.index.difference(pd.Index(items["item_idx"]))
    if len(unknown):
        raise ValueError(f"descriptions name {len(unknown)} item_idx values not in items, "
                         f"e.g. {unknown[:5].tolist()}")
    return _clean(descriptions.reindex(items["item_idx"].to_numpy())).reset_index(drop=True)


def item_texts(items: pd.DataFrame, kind: TextKind, descriptions: pd.Series | None = None) -> TextsWithFallback:
    """The text each item is encoded from under representation ``kind``.

    ``title``: the title. ``title_meta``: ``f"{title}. Genres: {meta_text}"``. ``genres``:
    ``f"Genres: {meta_text}"``, the metadata without the title (what a perfect poster reader could state
    without naming the film: a content reference beside the grounded description). ``description``: the
    grounded description. ``title_description``: ``title + ". " + description``. ``descriptions`` holds
    description text indexed by ``item_idx``, successful groundings only; an item absent from it (or with
    blank text), or with no metadata for ``title_meta``, gets its title text and is flagged as a fallback.
    An item without a title (e.g. an Amazon product with no metadata row) uses what else it has; with
    nothing at all its text is "" and it gets no vector (:attr:`TextsWithFallback.is_missing`).
    """
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown text kind {kind!r}; choose one of {TEXT_KINDS}")
    titles = _clean(items["title"]).reset_index(drop=True)
    if kind == "title":
        return TextsWithFallback(titles.tolist(), np.zeros(len(titles), dtype=bool), FALLBACK_RULES[kind])
    if kind == "genres":
        genres = _clean(items["meta_text"]).reset_index(drop=True)
        texts = ("Genres: " + genres).where(genres.ne(""), "")
        return TextsWithFallback(texts.tolist(), np.zeros(len(texts), dtype=bool), FALLBACK_RULES[kind])
    if kind == "title_meta":
        content = _clean(items["meta_text"]).reset_index(drop=True)
        joined = _join(titles, "Genres: " + content)
    else:
        content = _descriptions_for(items, descriptions)
        joined = content if kind == "description" else _join(titles, content)
    is_fallback = content.eq("").to_numpy() & titles.ne("").to_numpy()
    texts = joined.where(content.ne(""), titles)
    return TextsWithFallback(texts.tolist(), is_fallback, FALLBACK_RULES[kind] + _NO_TEXT_RULE)


def _join(first: pd.Series, second: pd.Series) -> pd.Series:
    """``first + ". " + second`` per row, or whichever of the two is non-empty."""
    both = first.ne("") & second.ne("")
    return (first + ". " + second).where(both, first + second)


@dataclass
class Representation:
    """A named item matrix: ``vectors`` ``(n_items, d)`` float32 rows aligned to item_idx, unit length or
    all zero (= missing). ``coverage`` is the share of items with a real, non-fallback vector."""

    name: str
    vectors: np.ndarray
    source: str
    coverage: float
    n_fallback: int
    n_missing: int
    fallback_rule: str = ""

    @property
    def n_items(self) -> int:
        return len(self.vectors)

    @property
    def has_content(self) -> bool:
        """Whether at least one item has a real vector: without one, every row is a fallback (another
        representation's vector under this name) or missing, and the representation must not be scored."""
        return self.coverage > 0

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def meta(self) -> dict:
        """Everything but the vectors, JSON-ready."""
        fields = asdict(self)
        del fields["vectors"]
        return fields | {"n_items": self.n_items, "dim": self.dim}

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.npy`` and ``<name>.json``; returns the ``.npy`` path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / f"{self.name}.npy", self.vectors)
        (directory / f"{self.name}.json").write_text(json.dumps(self.meta(), indent=2) + "\n")
        return directory / f"{self.name}.npy"

    @classmethod
    def load(cls, directory: str | Path, name: str) -> Representation:
        """Read what :meth:`save` wrote; refuses a matrix whose shape disagrees with its metadata."""
        directory = Path(directory)
        meta = read_output(directory / f"{name}.json", lambda path: json.loads(path.read_text()))
        vectors = read_output(directory / f"{name}.npy", np.load)
        if vectors.shape != (meta["n_items"], meta["dim"]):
            raise ValueError(f"{name}.npy has shape {vectors.shape}, its metadata says "
                             f"({meta['n_items']}, {meta['dim']})")
        return cls(name=meta["name"], vectors=vectors, source=meta["source"], coverage=meta["coverage"],
                   n_fallback=meta["n_fallback"], n_missing=meta["n_missing"],
                   fallback_rule=meta["fallback_rule"])


def from_texts(name: str, texts: TextsWithFallback, encode: Callable[[Sequence[str]], np.ndarray], dim: int,
               source: str) -> Representation:
    """Encode ``texts`` with ``encode`` (non-empty texts -> ``(n, dim)`` L2-normalised rows, e.g.
    :func:`vlm4rec.encoders.encode_texts` bound to a sentence encoder); fallback items keep their (title)
    vector and count against coverage, items with no text keep an all-zero row (missing)."""
    missing = texts.is_missing
    present = [text for text, gone in zip(texts.texts, missing) if not gone]
    encoded = encode(present) if present else None
    vectors = np.zeros((len(texts.texts), dim), dtype=np.float32)
    if encoded is not None:
        vectors[~missing] = encoded
    n = len(vectors)
    real = n - texts.n_fallback - int(missing.sum())
    return Representation(name=name, vectors=vectors, source=source, coverage=real / n if n else float("nan"),
                          n_fallback=texts.n_fallback, n_missing=int(missing.sum()),
                          fallback_rule=texts.fallback_rule)


def from_features(name: str, array: np.ndarray, source: str) -> Representation:
    """Precomputed or image features as a representation: non-zero rows L2-normalised, all-zero rows
    kept as zero and counted missing. Refuses non-finite values and arrays that are not 2-d."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name}: features must be 2-d (n_items, d), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: features contain NaN or infinite values")
    vectors = normalize_rows(array)
    present = np.any(vectors != 0, axis=1)
    return Representation(name=name, vectors=vectors, source=source, coverage=coverage_of(vectors),
                          n_fallback=0, n_missing=int((~present).sum()),
                          fallback_rule="items without features keep an all-zero row (never scored as real)")


def available_representations(directory: str | Path) -> list[str]:
    """Names of the representations saved under ``directory`` (sorted)."""
    return sorted(path.stem for path in Path(directory).glob("*.json"))


def representations_with_content(directory: str | Path) -> list[str]:
    """The saved representations with at least one item of their own (sorted): the ones a stage that scores
    every representation can score (e.g. ``genres`` of a source without metadata has none)."""
    return [name for name in available_representations(directory)
            if Representation.load(directory, name).has_content]


def load_vectors(directory: str | Path, name: str, key: str = "a representation name") -> np.ndarray:
    """The vectors of representation ``name``; a name the embed stage did not write is a
    :class:`StudyError` that names the parameter ``key`` it came from and lists what exists."""
    if not (Path(directory) / f"{name}.json").exists():
        known = available_representations(directory)
        raise StudyError(f"{key} names {name!r}, which is not among the representations the embed stage "
                         f"wrote to {directory}: {', '.join(known) or 'none (has the embed stage run?)'}")
    rep = Representation.load(directory, name)
    if not rep.has_content:
        raise StudyError(f"{key} names {name!r}, which has no item of its own: of its {rep.n_items} items "
                         f"{rep.n_fallback} fell back ({rep.fallback_rule}) and {rep.n_missing} have no vector, so "
                         "it would score a copy of another representation (or nothing) under its name. Fix its "
                         "input (metrics/embed.json; for descriptions the failures in metrics/ground.json) or "
                         f"leave it out of {key}.")
    return rep.vectors
