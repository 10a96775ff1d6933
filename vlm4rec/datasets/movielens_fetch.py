"""Get MovieLens-1M onto a machine: use the official files where they are, else download, check and place them.

:func:`resolve_movielens_1m` takes the first of:

1. ``root`` holds ``ratings.dat``, ``movies.dat`` and ``users.dat``: each must have the official sha256
   (:data:`~vlm4rec.datasets.movielens.OFFICIAL_SHA256`); nothing is downloaded, and the posters are read
   as they are from ``posters_dir`` (default ``root/posters``).
2. ``download_dir`` holds them (an earlier download): checked the same way and used.
3. Else GroupLens' ``ml-1m.zip`` is downloaded (into memory, size-capped) and checked: a zip archive holding
   ``ml-1m/ratings.dat``, ``movies.dat``, ``users.dat`` and ``README``, the three ``.dat`` with their
   official sha256. Only then are the four files written to ``download_dir``, each atomically.

In cases 2 and 3 without a ``posters_dir``, the posters (``<MovieID>.jpg``) go into ``download_dir/posters``
through :func:`vlm4rec.download.download_images`: resumable, and kept only when the bytes decode.
``posters/manifest.csv`` records each movie (MovieID, status, sha256, size). The status is ``ok``,
``no_poster`` (HTTP 404: the source has none and is not asked again; delete the manifest to retry) or
``failed_<reason>`` (tried again on the next run). A poster that fails is counted, not fatal, because the
study handles items without an image; but a posters folder left without a single poster is fatal (the study
would silently run on titles only), and so is a failed release download; both errors name the folder to
provide.

The GroupLens licence forbids redistribution: each user downloads the data; it is never committed.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vlm4rec.datasets.movielens import MOVIES_FILE, OFFICIAL_SHA256, read_movies
from vlm4rec.download import (DownloadFailure, DownloadReport, FetchError, download_images, fetch_bytes,
                              image_file, image_file_state, write_atomically)
from vlm4rec.errors import StudyError

ZIP_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
POSTERS_URL = ("https://raw.githubusercontent.com/liangfgithub/liangfgithub.github.io/master/MovieImages/"
               "{movie_id}.jpg")
ZIP_FOLDER = "ml-1m"
RELEASE_FILES = (*OFFICIAL_SHA256, "README")
POSTERS_MANIFEST = "manifest.csv"
#: sha256 of the study's 3,872 posters concatenated in file-name order (Python ``sorted(os.listdir())``):
#: equal when a folder holds exactly the posters the study used.
STUDY_POSTERS_SHA256 = "6fc0c7ead6f162c465721bd3bb096b32198ddce0c84863bb07d6d507e9f9fd89"
#: Largest accepted archive and member; the official zip is about 6 MB, its largest file 24.6 MB.
MAX_ZIP_BYTES = 64_000_000
MAX_MEMBER_BYTES = 128_000_000
#: Poster failures that mean the network is down: the remaining posters are then not tried this run.
OFFLINE_REASONS = frozenset({"connection_error", "timeout"})
PROVIDE_FOLDER = ("Provide a folder holding the official ml-1m files ratings.dat, movies.dat, users.dat and "
                  "posters/<MovieID>.jpg, and set data.movielens_1m.root to it (params.yaml).")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def has_release(folder: Path) -> bool:
    """Whether ``folder`` holds the three ``.dat`` files (regular files; not yet checked)."""
    return all((folder / name).is_file() for name in OFFICIAL_SHA256)


def verify_release(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"size", "sha256"}}`` of the three ``.dat`` files, each the official one, else a StudyError
    naming the file and both hashes."""
    found = {}
    for name, expected in OFFICIAL_SHA256.items():
        data = (folder / name).read_bytes()
        actual = sha256_hex(data)
        if actual != expected:
            raise StudyError(f"{folder / name} is not the official MovieLens-1M {name}: its sha256 is "
                             f"{actual}, the GroupLens release's is {expected}. Restore the official file "
                             f"({ZIP_URL}).")
        found[name] = {"size": len(data), "sha256": actual}
    return found


def _member(archive: zipfile.ZipFile, name: str, source: str) -> bytes:
    """The bytes of one archive member, refusing sizes no official file has (before decompressing)."""
    size = archive.getinfo(name).file_size
    if size > MAX_MEMBER_BYTES:
        raise StudyError(f"{source}: {name} declares {size:,} bytes, more than any official ml-1m file; "
                         f"nothing was unpacked. {PROVIDE_FOLDER}")
    return archive.read(name)


def release_members(archive: bytes, source: str) -> dict[str, bytes]:
    """The four release files of an ``ml-1m.zip`` archive, by file name; the ``.dat`` files must have their
    official sha256. A StudyError says what is wrong (not a zip, a member missing, a wrong hash)."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as opened:
            names = set(opened.namelist())
            missing = [f"{ZIP_FOLDER}/{name}" for name in RELEASE_FILES if f"{ZIP_FOLDER}/{name}" not in names]
            if missing:
                raise StudyError(f"{source}: the archive lacks {', '.join(missing)}; ml-1m.zip holds "
                                 f"{', '.join(f'{ZIP_FOLDER}/{n}' for n in RELEASE_FILES)}. {PROVIDE_FOLDER}")
            members = {name: _member(opened, f"{ZIP_FOLDER}/{name}", source) for name in RELEASE_FILES}
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise StudyError(f"{source} is not a valid zip archive ({err}); nothing was unpacked. Run again "
                         f"(a download can break off). {PROVIDE_FOLDER}") from None
    for name, expected in OFFICIAL_SHA256.items():
        actual = sha256_hex(members[name])
        if actual != expected:
            raise StudyError(f"{source}: {ZIP_FOLDER}/{name} in the archive has sha256 {actual}, not the "
                             f"official {expected}; nothing was unpacked. {PROVIDE_FOLDER}")
    return members


def download_release(zip_url: str, target: Path, retries: int, backoff_s: float) -> None:
    """Download ``ml-1m.zip``, check it (:func:`release_members`), then write its four files into ``target``.

    Each file is written atomically, and the files are only written once every check has passed. A file
    missing after a kill is downloaded again on the next run. Network failures raise
    :class:`~vlm4rec.download.FetchError`.
    """
    archive = fetch_bytes(zip_url, timeout_s=60, max_bytes=MAX_ZIP_BYTES, retries=retries, backoff_s=backoff_s)
    members = release_members(archive, zip_url)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
        write_atomically(data, target / name)


@dataclass
class Posters:
    """The poster files of a movie list: fingerprints of the regular files, and which movies have none.
    Lists are in file-name order (``1.jpg``, ``10.jpg``, ``100.jpg``)."""

    folder: Path
    files: dict[str, dict[str, Any]]  # MovieID -> {"sha256", "size"}; links leaving the folder included
    missing: list[str]                # no regular file <MovieID>.jpg
    not_regular_file: list[str]       # <MovieID>.jpg is a pipe, folder, device ... (also in missing)
    outside_folder: list[str]         # <MovieID>.jpg resolves outside the folder (also in files)
    set_sha256: str                   # all files' bytes concatenated in file-name order (STUDY_POSTERS_SHA256)


def scan_posters(movie_ids: list[str], folder: Path) -> Posters:
    """Hash every ``<MovieID>.jpg`` that is a regular file; never opens anything else."""
    real_folder = Path(os.path.realpath(folder))
    posters = Posters(folder, {}, [], [], [], "")
    whole_set = hashlib.sha256()
    for movie in sorted(movie_ids, key=lambda m: image_file(folder, m).name):
        path = image_file(real_folder, movie)
        state = image_file_state(path, real_folder)
        if state in ("ok", "outside_folder"):
            data = path.read_bytes()
            whole_set.update(data)
            posters.files[movie] = {"sha256": sha256_hex(data), "size": len(data)}
        else:
            posters.missing.append(movie)
        if state == "not_regular_file":
            posters.not_regular_file.append(movie)
        if state == "outside_folder":
            posters.outside_folder.append(movie)
    posters.set_sha256 = whole_set.hexdigest()
    return posters


def read_poster_statuses(manifest: Path) -> dict[str, str]:
    """MovieID -> status from an earlier ``posters/manifest.csv`` (empty when there is none)."""
    if not manifest.is_file():
        return {}
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return dict(zip(table["movie_id"], table["status"]))


def _merge(first: DownloadReport, rest: DownloadReport) -> DownloadReport:
    """One report for two runs of the downloader."""
    return DownloadReport(downloaded=first.downloaded + rest.downloaded,
                          skipped_existing=first.skipped_existing + rest.skipped_existing,
                          removed_partial=first.removed_partial + rest.removed_partial,
                          failures=sorted(first.failures + rest.failures, key=lambda f: f.item_id))


def download_posters(movie_ids: list[str], folder: Path, posters_url: str, progress: bool, retries: int,
                     backoff_s: float) -> DownloadReport:
    """Fetch the posters that are neither in ``folder`` nor known to have none (``no_poster``).

    One poster is tried first. If it fails because the network is down, the others are recorded as
    ``not_attempted`` instead of each waiting through its retries.
    """
    known_absent = {m for m, status in read_poster_statuses(folder / POSTERS_MANIFEST).items()
                    if status == "no_poster"}
    todo = {m: posters_url.format(movie_id=m) for m in movie_ids
            if m not in known_absent and not image_file(folder, m).is_file()}
    if not todo:
        return DownloadReport()
    first_id = next(iter(todo))
    first = download_images({first_id: todo.pop(first_id)}, folder, retries=retries, backoff_s=backoff_s,
                            progress=False)
    if first.failures and first.failures[0].reason in OFFLINE_REASONS:
        first.failures += [DownloadFailure(m, url, "not_attempted") for m, url in todo.items()]
        return first
    return _merge(first, download_images(todo, folder, retries=retries, backoff_s=backoff_s, progress=progress))


def write_poster_manifest(posters: Posters, movie_ids: list[str], report: DownloadReport) -> None:
    """Write ``posters/manifest.csv``: movie_id, status (``ok``, ``no_poster``, ``failed_<reason>``), sha256,
    size. A movie this run did not try keeps its earlier status."""
    path = posters.folder / POSTERS_MANIFEST
    earlier = read_poster_statuses(path)
    failed = {f.item_id: "no_poster" if f.reason == "http_404" else f"failed_{f.reason}"
              for f in report.failures}
    rows = []
    for movie in movie_ids:
        file = posters.files.get(movie)
        status = "ok" if file else failed.get(movie, earlier.get(movie, "missing"))
        rows.append({"movie_id": movie, "status": status, "sha256": file["sha256"] if file else "",
                     "size": file["size"] if file else ""})
    table = pd.DataFrame(rows, columns=["movie_id", "status", "sha256", "size"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(table.to_csv(index=False).encode(), path)


@dataclass
class MovieLensFiles:
    """Where this run's MovieLens-1M files are, their fingerprints, and what was downloaded."""

    root: Path
    release: dict[str, dict[str, Any]]  # file -> {"size", "sha256"}
    posters: Posters
    release_from: str                   # "root", "download_dir" (an earlier download) or "downloaded"
    poster_download: DownloadReport | None  # None: posters were not downloaded into (a given folder)

    def manifest(self) -> dict[str, Any]:
        """What the fetch stage records: resolved locations and fingerprints, nothing run-dependent."""
        return {"root": self.root.as_posix(), "files": self.release,
                "posters_dir": self.posters.folder.as_posix(), "posters": self.posters.files,
                "movies_without_poster": self.posters.missing,
                "posters_not_regular_file": self.posters.not_regular_file,
                "posters_outside_folder": self.posters.outside_folder}

    def counts(self) -> dict[str, int]:
        """For metrics/fetch.json: what was downloaded, found, missing, failed this run (posters_failed:
        not a 404, which means the source has no poster; those are among posters_missing)."""
        report = self.poster_download or DownloadReport()
        return {"release_downloaded": int(self.release_from == "downloaded"),
                "posters_found": len(self.posters.files), "posters_missing": len(self.posters.missing),
                "posters_are_the_study_set": int(self.posters.set_sha256 == STUDY_POSTERS_SHA256),
                "posters_not_regular_file": len(self.posters.not_regular_file),
                "posters_outside_folder": len(self.posters.outside_folder),
                "posters_downloaded": report.downloaded,
                "posters_failed": sum(f.reason != "http_404" for f in report.failures)}


def _release_folder(root: Path, download_dir: Path, zip_url: str, retries: int,
                    backoff_s: float) -> tuple[Path, str]:
    """(folder holding the checked release, how it got there); downloads when neither folder has it."""
    if has_release(root):
        return root, "root"
    if has_release(download_dir):
        return download_dir, "download_dir"
    try:
        download_release(zip_url, download_dir, retries, backoff_s)
    except FetchError as err:
        raise StudyError(f"MovieLens-1M is not at {root} and could not be downloaded from {zip_url} "
                         f"({err.detail}). {PROVIDE_FOLDER}") from None
    return download_dir, "downloaded"


def resolve_movielens_1m(root: str | Path, posters_dir: str | Path | None, download_dir: str | Path,
                         zip_url: str = ZIP_URL, posters_url: str = POSTERS_URL, progress: bool = True,
                         retries: int = 2, backoff_s: float = 0.5) -> MovieLensFiles:
    """Find or fetch MovieLens-1M (module docstring) and fingerprint its files.

    ``posters_url`` holds a ``{movie_id}`` placeholder. ``posters_dir`` given: its posters are used as they
    are, never downloaded into. ``retries`` / ``backoff_s``: as in :func:`vlm4rec.download.download_images`.
    """
    root, download_dir = Path(root), Path(download_dir)
    folder, release_from = _release_folder(root, download_dir, zip_url, retries, backoff_s)
    release = verify_release(folder)
    movie_ids = read_movies(folder / MOVIES_FILE)["item_id"].tolist()
    report = None
    if posters_dir is not None:
        posters_folder = Path(posters_dir)
    elif folder == root:
        posters_folder = root / "posters"
    else:
        posters_folder = download_dir / "posters"
        report = download_posters(movie_ids, posters_folder, posters_url, progress, retries, backoff_s)
    posters = scan_posters(movie_ids, posters_folder)
    if report is not None:
        write_poster_manifest(posters, movie_ids, report)
    if not posters.files:
        raise StudyError(f"{posters_folder} holds none of the {len(movie_ids):,} posters (<MovieID>.jpg)"
                         + (f"; none could be downloaded from {posters_url} ({_failure_reasons(report)})"
                            if report is not None and report.failures else "")
                         + f": the study does not run without images. {PROVIDE_FOLDER}")
    return MovieLensFiles(folder, release, posters, release_from, report)


def _failure_reasons(report: DownloadReport) -> str:
    """``connection_error: 1, not_attempted: 3``: a download run's failures by reason."""
    return ", ".join(f"{reason}: {n}" for reason, n in Counter(f.reason for f in report.failures).most_common())
