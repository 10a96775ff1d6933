"""Item images on disk (``<images_dir>/<item_id>.jpg``) and a resumable concurrent downloader.

The adapters (``vlm4rec.datasets.*``) read the layout with :func:`attach_image_paths`, which takes only
regular files and notes files that are links leaving the folder;
:func:`download_images` fills it from URLs. A download is kept only when its bytes fully decode
(:func:`vlm4rec.images.load_image`, the same check grounding applies);
it is written to a temporary file in the same folder and moved into place with ``os.replace``, so a
killed run never leaves a partial file under a final name, and a rerun skips every file that is already
there and decodes. Every failure is recorded with its reason, nothing is dropped silently.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import requests
from tqdm import tqdm

from vlm4rec.errors import StudyError, os_reason
from vlm4rec.images import ImageLoadError, load_image

IMAGE_SUFFIX = ".jpg"
#: What to do with an image file whose real path (symlinks resolved) lies outside its images folder:
#: ``record`` keeps it and counts it, ``refuse`` treats the item as having no image and counts it.
OutsideFolderPolicy = Literal["record", "refuse"]
OUTSIDE_FOLDER_POLICIES: tuple[str, ...] = ("record", "refuse")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_CHUNK = 1 << 16


def image_file(images_dir: str | Path, item_id: str) -> Path:
    """Where the image of ``item_id`` lives: ``<images_dir>/<item_id>.jpg`` (bytes as served)."""
    return Path(images_dir) / f"{item_id}{IMAGE_SUFFIX}"


def image_file_state(path: Path, real_folder: Path) -> str:
    """``ok``, ``absent``, ``not_regular_file`` or ``outside_folder`` for an image file ``path`` built as
    ``image_file(real_folder, key)`` (``real_folder``: the images folder with symlinks resolved).

    Decided from ``os.stat`` (symlinks followed) without opening the file: a named pipe or a device
    named ``1.jpg`` is ``not_regular_file``; a regular file whose real path is not under ``real_folder``
    (a symlink leaving it, a key holding ``../``) is ``outside_folder``; a dangling link is ``absent``.
    Only links and keys with a path separator are resolved (a plain file needs no lookup).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "absent"
    if not stat.S_ISREG(mode):
        return "not_regular_file"
    if (path.parent != real_folder or path.is_symlink()) and not Path(
            os.path.realpath(path)).is_relative_to(real_folder):
        return "outside_folder"
    return "ok"


def attach_image_paths(items: pd.DataFrame, images_dir: str | Path | None, counts: dict[str, int],
                       key: str = "item_id",
                       outside_folder: OutsideFolderPolicy = "refuse") -> pd.DataFrame:
    """Set ``image_path`` / ``has_image`` from the regular files present under ``images_dir``.

    ``key`` names the column whose value names the file (the item id, or e.g. the ASIN of a release
    whose item ids are integers). Without ``images_dir`` every item has no image; a given ``images_dir``
    without a single usable image is a :class:`StudyError` (a wrong folder, not a study without images). Adds to ``counts``:
    ``images_not_regular_file`` (never an image) and ``images_outside_folder`` (links whose target lies
    outside ``images_dir``: kept with ``outside_folder="record"``, no image with ``"refuse"``).
    """
    if outside_folder not in OUTSIDE_FOLDER_POLICIES:
        raise StudyError(f"images_outside_folder must be one of {OUTSIDE_FOLDER_POLICIES}, "
                         f"got {outside_folder!r}")
    items = items.copy()
    if images_dir is None:
        paths, states = [None] * len(items), ["absent"] * len(items)
    else:
        real_folder = Path(os.path.realpath(images_dir))
        paths = [image_file(images_dir, str(name)) for name in items[key]]
        states = [image_file_state(image_file(real_folder, str(name)), real_folder) for name in items[key]]
    usable = {"ok", "outside_folder"} if outside_folder == "record" else {"ok"}
    present = [state in usable for state in states]
    if images_dir is not None and len(items) and not any(present):
        raise StudyError(f"the images folder {images_dir} holds no usable image for any of the {len(items):,} "
                         f"items (<{key}>{IMAGE_SUFFIX}, regular files inside the folder): put the images there or "
                         "name the right folder in params.yaml (data.<source>); the study does not run without "
                         "images")
    items["image_path"] = pd.Series([str(p) if ok else None for p, ok in zip(paths, present)],
                                    index=items.index, dtype=object)
    items["has_image"] = present
    counts["images_not_regular_file"] = states.count("not_regular_file")
    counts["images_outside_folder"] = states.count("outside_folder")
    return items


@dataclass(frozen=True)
class DownloadFailure:
    """An item whose image could not be fetched, and why (``http_404``, ``timeout``, ``too_large``,
    ``truncated`` ...)."""

    item_id: str
    url: str
    reason: str


@dataclass
class DownloadReport:
    """What a :func:`download_images` run did: downloaded, already there, stale temporary files
    removed, failed (with reasons)."""

    downloaded: int = 0
    skipped_existing: int = 0
    removed_partial: int = 0
    failures: list[DownloadFailure] = field(default_factory=list)

    @property
    def failed_by_reason(self) -> dict[str, int]:
        return dict(Counter(f.reason for f in self.failures))

    def counts(self) -> dict[str, int]:
        """Flat counts for a metrics file: downloaded, skipped_existing, failed, failed_<reason>."""
        out = {"downloaded": self.downloaded, "skipped_existing": self.skipped_existing,
               "removed_partial": self.removed_partial, "failed": len(self.failures)}
        out.update({f"failed_{reason}": n for reason, n in sorted(self.failed_by_reason.items())})
        return out

    def failures_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(f) for f in self.failures], columns=["item_id", "url", "reason"])

    def write_failures(self, path: str | Path) -> None:
        """Write the failures as CSV, or Parquet when ``path`` ends in ``.parquet``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = self.failures_frame()
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)


class FetchError(Exception):
    """A fetch failed: ``reason`` is countable (``http_404``, ``timeout``, ``connection_error`` ...),
    ``detail`` says it in words (``Connection refused``); ``retryable``: another attempt may succeed."""

    def __init__(self, reason: str, retryable: bool, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.retryable, self.detail = reason, retryable, detail or reason


def image_problem(source: bytes | Path) -> str | None:
    """Why the bytes (or the file) are not a usable image (an :class:`ImageLoadError` kind such as
    ``not_an_image`` or ``truncated``), or None when :func:`vlm4rec.images.load_image` decodes them."""
    try:
        load_image(source)
    except ImageLoadError as err:
        return err.kind
    return None


def _fetch_once(session: requests.Session, url: str, timeout_s: float, max_bytes: int) -> bytes:
    """GET ``url`` streaming, enforcing the timeout and the size cap; raise :class:`FetchError`."""
    try:
        with session.get(url, timeout=timeout_s, stream=True) as response:
            if response.status_code != 200:
                status = response.status_code
                raise FetchError(f"http_{status}", retryable=status in RETRY_STATUSES, detail=f"HTTP {status}")
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError("too_large", retryable=False, detail=f"{declared} bytes > limit {max_bytes}")
            body = bytearray()
            for chunk in response.iter_content(_CHUNK):
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise FetchError("too_large", retryable=False, detail=f"more than {max_bytes} bytes")
            return bytes(body)
    except requests.Timeout as exc:
        raise FetchError("timeout", retryable=True, detail=f"no answer within {timeout_s} s") from exc
    except requests.ConnectionError as exc:
        raise FetchError("connection_error", retryable=True, detail=os_reason(exc)) from exc
    except requests.RequestException as exc:
        raise FetchError(f"request_error:{type(exc).__name__}", retryable=False,
                         detail=os_reason(exc)) from exc


def _fetch_with_retries(session: requests.Session, url: str, timeout_s: float, max_bytes: int,
                        retries: int, backoff_s: float) -> bytes:
    """:func:`_fetch_once`, retried up to ``retries`` times on retryable errors, backoff doubling."""
    attempt = 0
    while True:
        try:
            return _fetch_once(session, url, timeout_s, max_bytes)
        except FetchError as err:
            if not err.retryable or attempt >= retries:
                raise
            time.sleep(backoff_s * 2 ** attempt)
            attempt += 1


def fetch_bytes(url: str, timeout_s: float = 20, max_bytes: int = 20_000_000, retries: int = 3,
                backoff_s: float = 0.5) -> bytes:
    """The body of ``url``, with the same timeout, size cap and retry rules as :func:`download_images`;
    :class:`FetchError` when it cannot be had."""
    with requests.Session() as session:
        return _fetch_with_retries(session, url, timeout_s, max_bytes, retries, backoff_s)


def write_atomically(data: bytes, target: Path) -> None:
    """Write ``data`` to a temporary file beside ``target`` and move it into place, so that ``target``
    is either absent or complete, never partial."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_partial_files(out: Path) -> int:
    """Delete temporary files a killed run left behind; return how many."""
    stale = list(out.glob(".*.part"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def download_images(urls: Mapping[str, str | None], out_dir: str | Path, concurrency: int = 8,
                    timeout_s: float = 20, max_bytes: int = 20_000_000, retries: int = 3,
                    backoff_s: float = 0.5, progress: bool = True) -> DownloadReport:
    """Fetch ``item_id -> url`` into ``out_dir/<item_id>.jpg``; resumable, retried, verified.

    Skips items whose file exists and decodes; retries 429 / 5xx / timeouts / connection errors with
    exponential backoff (``backoff_s * 2**attempt``), never other statuses such as 404; aborts bodies
    over ``max_bytes`` (declared or streamed); keeps only bytes that decode as an image (else the
    failure reason is the decoder's: ``not_an_image``, ``truncated``, ``empty`` ...). ``timeout_s``
    bounds connecting and each read (the ``requests`` meaning), not the whole transfer.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = DownloadReport(removed_partial=_remove_partial_files(out))
    todo: list[tuple[str, str]] = []
    for item_id, url in urls.items():
        item_id = str(item_id)
        if not _SAFE_ID.match(item_id) or item_id in (".", ".."):
            report.failures.append(DownloadFailure(item_id, url or "", "unsafe_item_id"))
        elif not url:
            report.failures.append(DownloadFailure(item_id, "", "no_url"))
        elif image_file(out, item_id).is_file() and image_problem(image_file(out, item_id)) is None:
            report.skipped_existing += 1
        else:
            todo.append((item_id, url))

    local = threading.local()

    def fetch(item_id: str, url: str) -> DownloadFailure | None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            data = _fetch_with_retries(local.session, url, timeout_s, max_bytes, retries, backoff_s)
        except FetchError as err:
            return DownloadFailure(item_id, url, err.reason)
        problem = image_problem(data)
        if problem is not None:
            return DownloadFailure(item_id, url, problem)
        write_atomically(data, image_file(out, item_id))
        return None

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
            tqdm(total=len(todo), disable=not progress, desc="images", unit="img") as bar:
        futures = [pool.submit(fetch, item_id, url) for item_id, url in todo]
        for future in as_completed(futures):
            failure = future.result()
            if failure is None:
                report.downloaded += 1
            else:
                report.failures.append(failure)
            bar.update(1)
    report.failures.sort(key=lambda f: f.item_id)
    return report
