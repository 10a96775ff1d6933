"""Description cache: SQLite, keyed by what determines a description, written as work finishes.

Key = sha256 over (sha256 of the image bytes, grounder id, model id/revision, exact prompt, canonical
JSON of the decoding settings); the five fields are stored next to it so the cache can be audited and
queried. The database runs in WAL mode and every :meth:`DescriptionCache.put_many` is one transaction,
so a process killed at any point (even SIGKILL) loses at most the batch it had not yet written, and a
re-run describes only what is missing. A file SQLite cannot use (truncated, not a database, in a
read-only folder) is a :class:`~vlm4rec.errors.StudyError` naming the file and what to do.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vlm4rec.errors import StudyError

OK, FAILED = "ok", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS descriptions (
    key          TEXT PRIMARY KEY,
    image_sha256 TEXT NOT NULL,
    grounder_id  TEXT NOT NULL,
    model_id     TEXT NOT NULL,
    prompt       TEXT NOT NULL,
    settings     TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    description  TEXT,
    error_kind   TEXT,
    error        TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
)"""


def settings_json(settings: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, no spaces) so equal settings give equal keys."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(image_sha256: str, grounder_id: str, model_id: str, prompt: str, settings: dict[str, Any]) -> str:
    """Hex sha256 over the five fields that determine a description."""
    fields = [image_sha256, grounder_id, model_id, prompt, settings_json(settings)]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One cached outcome: a description (status ``ok``) or a failure with its kind and reason."""

    key: str
    image_sha256: str
    grounder_id: str
    model_id: str
    prompt: str
    settings: dict[str, Any]
    status: str
    description: str | None = None
    error_kind: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in (OK, FAILED):
            raise ValueError(f"status must be {OK!r} or {FAILED!r}, got {self.status!r}")
        if self.status == OK and self.description is None:
            raise ValueError("an ok entry needs a description")


@contextmanager
def usable(path: Path) -> Iterator[None]:
    """Turn SQLite's errors about the cache file into a :class:`StudyError` that names the file and what to
    do: a file that cannot be written (a read-only folder or file) is the user's to fix; a damaged one is
    moved aside, and rerunning the ground stage rebuilds it (describing again what it held)."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        reason = str(err)
        if any(word in reason for word in ("readonly", "unable to open", "read-only", "permission")):
            advice = (f"make {path.parent} and the file writable, or set ground.cache to a writable path "
                      "(params.yaml)")
        else:
            advice = (f"move it aside (mv {path} {path}.broken) and rerun: the ground stage rebuilds the cache, "
                      "describing its items again")
        raise StudyError(f"{path}: the description cache cannot be used ({reason}); {advice}") from None


class DescriptionCache:
    """SQLite-backed map from cache key to :class:`CacheEntry`. Use as a context manager or call close()."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with usable(self.path):
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against process crashes in WAL mode (not against power loss): enough here.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        """The entries present for ``keys`` (absent keys are simply missing from the result)."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, CacheEntry] = {}
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
            chunk = unique[start:start + 500]
            with usable(self.path):
                rows = self._db.execute(
                    "SELECT key, image_sha256, grounder_id, model_id, prompt, settings, status, description, "
                    f"error_kind, error FROM descriptions WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            for row in rows:
                found[row[0]] = CacheEntry(*row[:5], json.loads(row[5]), *row[6:])
        return found

    def put_many(self, entries: Iterable[CacheEntry]) -> None:
        """Insert or replace ``entries`` in one transaction (one commit per finished batch)."""
        now = time.time()
        rows = [(e.key, e.image_sha256, e.grounder_id, e.model_id, e.prompt, settings_json(e.settings),
                 e.status, e.description, e.error_kind, e.error, now, now) for e in entries]
        with usable(self.path), self._db:
            self._db.executemany(
                "INSERT INTO descriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET status=excluded.status, description=excluded.description, "
                "error_kind=excluded.error_kind, error=excluded.error, updated_at=excluded.updated_at", rows)

    def __len__(self) -> int:
        with usable(self.path):
            return self._db.execute("SELECT COUNT(*) FROM descriptions").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "DescriptionCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
