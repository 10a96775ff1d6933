"""MovieLens-1M found, or downloaded, checked and placed, against an HTTP server on 127.0.0.1 that the test
starts and stops. The release is a tiny fake in the GroupLens layout; its hashes stand in for the
official ones (monkeypatched), never the real files."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from test_datasets_movielens import MOVIES, RATINGS
from vlm4rec.datasets import movielens
from vlm4rec.datasets.movielens import load_movielens_1m
from vlm4rec.datasets.movielens_fetch import PROVIDE_FOLDER, resolve_movielens_1m
from vlm4rec.download import image_problem
from vlm4rec.errors import StudyError

USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117"]
POSTER_IDS = ("1", "11", "99")  # 73 has none: the host answers 404
FAST = dict(progress=False, retries=1, backoff_s=0.01)


def release_files(movies: list[str] = MOVIES) -> dict[str, bytes]:
    """The four files of a fake ml-1m release: latin-1 movies, ASCII ratings and users, a README."""
    return {"ratings.dat": ("\n".join(RATINGS) + "\n").encode("ascii"),
            "movies.dat": ("\n".join(movies) + "\n").encode("latin-1"),
            "users.dat": ("\n".join(USERS) + "\n").encode("ascii"),
            "README": b"SUMMARY\n(fake release for tests)\n"}


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"ml-1m/{name}", data)
    return buffer.getvalue()


def poster(movie: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 9), (int(movie) % 255, 40, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture()
def official(monkeypatch) -> dict[str, bytes]:
    """The fake release, with its .dat hashes recorded as the official ones."""
    files = release_files()
    for name in movielens.OFFICIAL_SHA256:
        monkeypatch.setitem(movielens.OFFICIAL_SHA256, name, hashlib.sha256(files[name]).hexdigest())
    return files


class ReleaseHost:
    """Serves ``routes`` (path -> bytes); paths in ``cut_short`` send half their body under the full
    Content-Length and hang up; anything else is 404. ``hits`` counts requests per path."""

    def __init__(self, routes: dict[str, bytes]) -> None:
        self.routes, self.cut_short, self.hits = routes, set(), Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                host.hits[self.path] += 1
                body = host.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in host.cut_short else body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def urls(self) -> dict[str, str]:
        """The zip_url and posters_url keyword arguments pointing here."""
        return {"zip_url": f"{self.base}/ml-1m.zip", "posters_url": self.base + "/posters/{movie_id}.jpg"}


@pytest.fixture()
def host(official):
    routes = {"/ml-1m.zip": zipped(official)} | {f"/posters/{m}.jpg": poster(m) for m in POSTER_IDS}
    server = ReleaseHost(routes)
    yield server
    server.stop()


def closed_port_url(path: str) -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}{path}"


def offline_urls() -> dict[str, str]:
    return {"zip_url": closed_port_url("/ml-1m.zip"), "posters_url": closed_port_url("/{movie_id}.jpg")}


def write_release(folder: Path, files: dict[str, bytes], posters: tuple[str, ...] = POSTER_IDS) -> Path:
    (folder / "posters").mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for movie in posters:
        (folder / "posters" / f"{movie}.jpg").write_bytes(poster(movie))
    return folder


def test_fresh_machine_downloads_checks_and_places_release_and_posters(host, official, tmp_path):
    download_dir = tmp_path / "data" / "raw" / "ml-1m"
    files = resolve_movielens_1m(tmp_path / "absent", None, download_dir, **host.urls(), **FAST)
    assert files.release_from == "downloaded" and files.root == download_dir
    for name, data in official.items():
        assert (download_dir / name).read_bytes() == data
    assert files.release == {n: {"size": len(official[n]), "sha256": hashlib.sha256(official[n]).hexdigest()}
                             for n in ("ratings.dat", "movies.dat", "users.dat")}
    posters = download_dir / "posters"
    assert all(image_problem(posters / f"{m}.jpg") is None for m in POSTER_IDS)
    manifest = pd.read_csv(posters / "manifest.csv", dtype=str, keep_default_na=False)
    assert manifest[["movie_id", "status"]].values.tolist() == [
        ["1", "ok"], ["11", "ok"], ["73", "no_poster"], ["99", "ok"]]
    assert manifest.set_index("movie_id").loc["11", "sha256"] == hashlib.sha256(poster("11")).hexdigest()
    assert files.counts() == {"release_downloaded": 1, "posters_found": 3, "posters_missing": 1,
                              "posters_are_the_study_set": 0, "posters_not_regular_file": 0,
                              "posters_outside_folder": 0,
                              "posters_downloaded": 3, "posters_failed": 0}
    assert files.manifest()["movies_without_poster"] == ["73"]
    assert sorted(p.name for p in download_dir.iterdir()) == ["README", "movies.dat", "posters", "ratings.dat",
                                                              "users.dat"]
    assert load_movielens_1m(files.root, files.posters.folder).counts["posters_found"] == 3


def test_second_run_downloads_nothing_and_needs_no_network(host, tmp_path):
    download_dir = tmp_path / "ml-1m"
    first = resolve_movielens_1m(tmp_path / "absent", None, download_dir, **host.urls(), **FAST)
    hits = host.hits.copy()
    again = resolve_movielens_1m(tmp_path / "absent", None, download_dir, **host.urls(), **FAST)
    assert host.hits == hits  # not even the poster that has none (404) is asked again
    host.stop()
    offline = resolve_movielens_1m(tmp_path / "absent", None, download_dir, **host.urls(), **FAST)
    assert again.release_from == offline.release_from == "download_dir"
    assert first.manifest() == again.manifest() == offline.manifest()
    assert offline.counts()["posters_downloaded"] == offline.counts()["posters_failed"] == 0


def test_interrupted_poster_download_resumes(host, tmp_path):
    download_dir = tmp_path / "ml-1m"
    host.cut_short.add("/posters/11.jpg")
    first = resolve_movielens_1m(tmp_path / "absent", None, download_dir, **host.urls(), **FAST)
    manifest = pd.read_csv(download_dir / "posters" / "manifest.csv", dtype=str, keep_default_na=False)
    assert manifest.set_index("movie_id").loc["11", "status"].startswith("failed_")
    assert first.counts()["posters_missing"] == 2 and not (download_dir / "posters" / "11.jpg").exists()
    (download_dir / "posters" / ".99.jpg.killed.part").write_bytes(b"half")  # what a killed run leaves
    host.cut_short.clear()
    before = host.hits.copy()
    resumed = resolve_movielens_1m(tmp_path / "absent", None, download_dir, **host.urls(), **FAST)
    assert host.hits - before == Counter({"/posters/11.jpg": 1})
    assert resumed.counts()["posters_downloaded"] == 1 and resumed.manifest()["movies_without_poster"] == ["73"]
    assert sorted(p.name for p in (download_dir / "posters").iterdir()) == [
        "1.jpg", "11.jpg", "99.jpg", "manifest.csv"]


def test_offline_poster_download_gives_up_after_one_try_and_stops_without_posters(host, official, tmp_path):
    download_dir = write_release(tmp_path / "ml-1m", official, posters=())
    started = time.monotonic()
    with pytest.raises(StudyError, match=rf"{download_dir}/posters holds none of the 4 posters \(<MovieID>.jpg\); "
                                         r"none could be downloaded from .* \(not_attempted: 3, connection_error: 1\): "
                                         "the study does not run without images. Provide a folder"):
        resolve_movielens_1m(tmp_path / "absent", None, download_dir, **offline_urls(), **FAST)
    assert time.monotonic() - started < 3
    statuses = pd.read_csv(download_dir / "posters" / "manifest.csv", dtype=str)["status"].tolist()
    assert statuses == ["failed_connection_error"] + ["failed_not_attempted"] * 3


def damaged_archives(official: dict[str, bytes]) -> dict[str, bytes]:
    good = zipped(official)
    edited = official | {"movies.dat": official["movies.dat"].replace(b"Toy Story", b"Toy Storm")}
    return {"not_a_zip": b"<html>moved</html>", "cut_short": good[: len(good) // 2],
            "edited": zipped(edited), "lacking": zipped({k: v for k, v in official.items() if k != "users.dat"})}


@pytest.mark.parametrize("case, message", [
    ("not_a_zip", r"/not_a_zip is not a valid zip archive \(File is not a zip file\); nothing was unpacked"),
    ("cut_short", r"/cut_short is not a valid zip archive \(.+\); nothing was unpacked"),
    ("edited", r"/edited: ml-1m/movies.dat in the archive has sha256 [0-9a-f]{64}, not the official "
               r"[0-9a-f]{64}; nothing was unpacked"),
    ("lacking", r"/lacking: the archive lacks ml-1m/users.dat; ml-1m.zip holds ml-1m/ratings.dat, "
                r"ml-1m/movies.dat, ml-1m/users.dat, ml-1m/README"),
])
def test_damaged_archive_is_refused_and_nothing_placed(host, official, tmp_path, case, message):
    host.routes[f"/{case}"] = damaged_archives(official)[case]
    download_dir = tmp_path / "ml-1m"
    with pytest.raises(StudyError, match=message) as error:
        resolve_movielens_1m(tmp_path / "absent", None, download_dir, zip_url=f"{host.base}/{case}", **FAST)
    if case == "edited":
        assert hashlib.sha256(official["movies.dat"]).hexdigest() in str(error.value)
    assert not download_dir.exists() or not any(download_dir.iterdir())


def test_local_release_is_used_as_is_without_network(official, tmp_path):
    root = write_release(tmp_path / "ml-1m", official)
    files = resolve_movielens_1m(root, None, tmp_path / "download", **offline_urls(), **FAST)
    assert (files.release_from, files.root, files.posters.folder) == ("root", root, root / "posters")
    assert files.poster_download is None and not (tmp_path / "download").exists()
    assert not (root / "posters" / "manifest.csv").exists()  # a given folder is only read
    assert files.manifest()["posters"]["99"] == {"sha256": hashlib.sha256(poster("99")).hexdigest(),
                                                 "size": len(poster("99"))}
    assert files.posters.set_sha256 == hashlib.sha256(b"".join(poster(m) for m in POSTER_IDS)).hexdigest()
    elsewhere = write_release(tmp_path / "art", {}, posters=("73",)) / "posters"
    assert resolve_movielens_1m(root, elsewhere, tmp_path / "download", **FAST).manifest()[
        "movies_without_poster"] == ["1", "11", "99"]


def test_local_file_that_is_not_the_official_one_is_named_with_both_hashes(official, tmp_path):
    edited = official | {"ratings.dat": official["ratings.dat"] + b"9::1::5::978300760\n"}
    root = write_release(tmp_path / "ml-1m", edited)
    with pytest.raises(StudyError) as error:
        resolve_movielens_1m(root, None, tmp_path / "download", **offline_urls(), **FAST)
    assert str(error.value) == (
        f"{root / 'ratings.dat'} is not the official MovieLens-1M ratings.dat: its sha256 is "
        f"{hashlib.sha256(edited['ratings.dat']).hexdigest()}, the GroupLens release's is "
        f"{hashlib.sha256(official['ratings.dat']).hexdigest()}. Restore the official file "
        f"(https://files.grouplens.org/datasets/movielens/ml-1m.zip).")


def test_offline_without_data_says_which_folder_to_provide(tmp_path):
    urls = offline_urls()
    with pytest.raises(StudyError) as error:
        resolve_movielens_1m(tmp_path / "absent", None, tmp_path / "download", **urls, **FAST)
    assert str(error.value) == (
        f"MovieLens-1M is not at {tmp_path / 'absent'} and could not be downloaded from {urls['zip_url']} "
        f"(Connection refused). Provide a folder holding the official ml-1m files ratings.dat, movies.dat, "
        f"users.dat and posters/<MovieID>.jpg, and set data.movielens_1m.root to it (params.yaml).")
    assert PROVIDE_FOLDER in str(error.value) and not (tmp_path / "download").exists()


def test_odd_poster_files_are_listed_and_never_opened(official, tmp_path):
    root = write_release(tmp_path / "ml-1m", official, posters=("11",))
    os.mkfifo(root / "posters" / "1.jpg")  # opening it would block the scan
    (tmp_path / "outside.jpg").write_bytes(poster("99"))
    (root / "posters" / "99.jpg").symlink_to(tmp_path / "outside.jpg")
    manifest = resolve_movielens_1m(root, None, tmp_path / "download", **FAST).manifest()
    assert sorted(manifest["posters"]) == ["11", "99"]
    assert (manifest["movies_without_poster"], manifest["posters_not_regular_file"],
            manifest["posters_outside_folder"]) == (["1", "73"], ["1"], ["99"])


def test_a_posters_folder_without_a_poster_stops_the_fetch(official, tmp_path):
    root = write_release(tmp_path / "ml-1m", official, posters=())
    with pytest.raises(StudyError, match=rf"^{root}/posters holds none of the 4 posters \(<MovieID>.jpg\): the "
                                         "study does not run without images"):
        resolve_movielens_1m(root, None, tmp_path / "download", **offline_urls(), **FAST)
