"""download_images against a real HTTP server on 127.0.0.1 (started and stopped by the test)."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vlm4rec.download import (DownloadFailure, FetchError, attach_image_paths, download_images, fetch_bytes,
                              image_file, image_problem)
from vlm4rec.errors import StudyError

FAST = dict(timeout_s=0.3, retries=2, backoff_s=0.01, progress=False)
FAST_FETCH = dict(timeout_s=0.3, retries=1, backoff_s=0.01)


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageHost:
    """Routes: /ok/<x> an image, /missing 404, /flaky 500 twice then an image, /slow sleeps past any
    test timeout, /big declares a huge Content-Length, /bigstream streams too many bytes without one,
    /text serves non-image bytes, /stall sends half an image then waits until released."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.stalled = threading.Event()
        self.release = threading.Event()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def send_body(self, body: bytes, length: int | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path
                host.hits[path] += 1
                if path.startswith("/ok/"):
                    self.send_body(png_bytes((len(path) * 20 % 255, 10, 200)))
                elif path == "/flaky" and host.hits[path] <= 2:
                    self.send_error(500)
                elif path == "/flaky":
                    self.send_body(png_bytes((1, 2, 3)))
                elif path == "/slow":
                    time.sleep(1.5)
                    self.send_body(png_bytes((4, 5, 6)))
                elif path == "/big":
                    self.send_response(200)
                    self.send_header("Content-Length", "999999999")
                    self.end_headers()
                elif path == "/bigstream":
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"\0" * 1024)
                elif path == "/text":
                    self.send_body(b"<html>not an image</html>")
                elif path == "/stall":
                    body = png_bytes((9, 9, 9))
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    host.stalled.set()
                    if host.release.wait(10):
                        self.wfile.write(body[len(body) // 2:])
                else:
                    self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture()
def host():
    server = ImageHost()
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


def test_success_writes_decodable_files_named_by_item_id(host, tmp_path):
    report = download_images({"a": host.url("/ok/a"), "b": host.url("/ok/b")}, tmp_path,
                             concurrency=2, **FAST)
    assert (report.downloaded, report.skipped_existing, report.failures) == (2, 0, [])
    for item in ("a", "b"):
        with Image.open(tmp_path / f"{item}.jpg") as image:
            assert image.size == (8, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.jpg"]


def test_404_is_recorded_and_not_retried(host, tmp_path):
    report = download_images({"m": host.url("/missing")}, tmp_path, **FAST)
    assert report.failures == [DownloadFailure("m", host.url("/missing"), "http_404")]
    assert host.hits["/missing"] == 1
    assert report.counts() == {"downloaded": 0, "skipped_existing": 0, "removed_partial": 0,
                               "failed": 1, "failed_http_404": 1}


def test_server_error_is_retried_until_success(host, tmp_path):
    report = download_images({"f": host.url("/flaky")}, tmp_path, **FAST)
    assert report.downloaded == 1 and report.failures == []
    assert host.hits["/flaky"] == 3


def test_server_error_gives_up_after_retries(host, tmp_path):
    report = download_images({"f": host.url("/flaky")}, tmp_path, **{**FAST, "retries": 1})
    assert report.failed_by_reason == {"http_500": 1}
    assert host.hits["/flaky"] == 2


def test_slow_response_times_out_after_all_attempts(host, tmp_path):
    started = time.monotonic()
    report = download_images({"s": host.url("/slow")}, tmp_path, **{**FAST, "retries": 1})
    assert report.failed_by_reason == {"timeout": 1}
    assert host.hits["/slow"] == 2
    assert time.monotonic() - started < 1.4  # the client gave up before the server answered
    assert not image_file(tmp_path, "s").exists()


def test_oversized_bodies_are_aborted(host, tmp_path):
    urls = {"declared": host.url("/big"), "streamed": host.url("/bigstream")}
    report = download_images(urls, tmp_path, max_bytes=10_000, **FAST)
    assert report.failures == [DownloadFailure("declared", urls["declared"], "too_large"),
                               DownloadFailure("streamed", urls["streamed"], "too_large")]
    assert host.hits["/big"] == 1 and host.hits["/bigstream"] == 1
    assert list(tmp_path.iterdir()) == []


def test_non_image_bytes_are_rejected_and_failures_written(host, tmp_path):
    urls = {"t": host.url("/text"), "n": None, "../x": host.url("/ok/x")}
    report = download_images(urls, tmp_path / "img", **FAST)
    assert report.failed_by_reason == {"not_an_image": 1, "no_url": 1, "unsafe_item_id": 1}
    assert list((tmp_path / "img").iterdir()) == []
    report.write_failures(tmp_path / "fail.csv")
    report.write_failures(tmp_path / "fail.parquet")
    for frame in (pd.read_csv(tmp_path / "fail.csv", keep_default_na=False),
                  pd.read_parquet(tmp_path / "fail.parquet")):
        assert frame.to_dict("records") == [
            {"item_id": "../x", "url": urls["../x"], "reason": "unsafe_item_id"},
            {"item_id": "n", "url": "", "reason": "no_url"},
            {"item_id": "t", "url": urls["t"], "reason": "not_an_image"}]


def test_killed_run_leaves_no_partial_file_and_rerun_finishes(host, tmp_path):
    out = tmp_path / "img"
    first = {"a": host.url("/ok/a"), "b": host.url("/ok/b"), "s": host.url("/stall")}
    script = ("import json, sys; from vlm4rec.download import download_images; "
              "download_images(json.loads(sys.argv[1]), sys.argv[2], concurrency=1, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(first), str(out)])
    try:
        assert host.stalled.wait(30), "the download never reached the stalled item"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert image_problem(out / "a.jpg") is None and image_problem(out / "b.jpg") is None
    assert not (out / "s.jpg").exists()
    (out / ".c.jpg.leftover.part").write_bytes(b"half")  # what a kill during a write would leave
    (out / "c.jpg").write_bytes(png_bytes((0, 0, 0))[:20])  # truncated by some other tool
    host.release.set()

    report = download_images({**first, "c": host.url("/ok/c")}, out, **FAST)
    assert (report.skipped_existing, report.downloaded, report.removed_partial) == (2, 2, 1)
    assert report.failures == []
    assert host.hits["/ok/a"] == 1 and host.hits["/ok/b"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.jpg", "c.jpg", "s.jpg"]
    assert all(image_problem(p) is None for p in out.iterdir())


def test_progress_bar_run_and_attach_image_paths(host, tmp_path):
    report = download_images({"7": host.url("/ok/7")}, tmp_path, progress=True, timeout_s=2)
    assert report.downloaded == 1
    items = pd.DataFrame({"item_id": ["7", "8"], "asin": ["B7", "B8"]})
    attached = attach_image_paths(items, tmp_path, {})
    assert attached["image_path"].tolist() == [str(tmp_path / "7.jpg"), None]
    assert attached["has_image"].tolist() == [True, False]
    (tmp_path / "B8.jpg").write_bytes(b"x")
    by_asin = attach_image_paths(items, tmp_path, {}, key="asin")
    assert by_asin["has_image"].tolist() == [False, True]
    counts: dict[str, int] = {}
    assert attach_image_paths(items, None, counts)["has_image"].tolist() == [False, False]
    assert counts == {"images_not_regular_file": 0, "images_outside_folder": 0}


def odd_images_folder(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A folder where a.jpg is a plain image, fifo.jpg a named pipe, dir.jpg a folder, link.jpg a symlink
    to an image outside the folder, inner.jpg a symlink inside it, dangling.jpg a broken link."""
    folder, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "a.jpg").write_bytes(png_bytes((1, 2, 3)))
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dir.jpg").mkdir()
    (elsewhere / "x.jpg").write_bytes(png_bytes((4, 5, 6)))
    (folder / "link.jpg").symlink_to(elsewhere / "x.jpg")
    (folder / "inner.jpg").symlink_to(folder / "a.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    ids = ["a", "fifo", "dir", "link", "inner", "dangling", "absent", "../elsewhere/x"]
    return folder, pd.DataFrame({"item_id": ids})


def test_attach_takes_regular_files_only_and_records_links_leaving_the_folder(tmp_path):
    folder, items = odd_images_folder(tmp_path)
    counts: dict[str, int] = {}
    attached = attach_image_paths(items, folder, counts, outside_folder="record").set_index("item_id")["has_image"]
    assert attached.to_dict() == {"a": True, "fifo": False, "dir": False, "link": True, "inner": True,
                                  "dangling": False, "absent": False, "../elsewhere/x": True}
    assert counts == {"images_not_regular_file": 2, "images_outside_folder": 2}


def test_attach_refuses_images_outside_the_folder_by_default(tmp_path):
    folder, items = odd_images_folder(tmp_path)
    counts: dict[str, int] = {}
    attached = attach_image_paths(items, folder, counts)
    assert attached.loc[attached["has_image"], "item_id"].tolist() == ["a", "inner"]
    assert attached.set_index("item_id")["image_path"].isna().to_dict()["link"]
    assert counts == {"images_not_regular_file": 2, "images_outside_folder": 2}
    with pytest.raises(StudyError, match="images_outside_folder must be one of .*'follow'"):
        attach_image_paths(items, folder, counts, outside_folder="follow")


def test_fetch_bytes_says_why_in_words(host):
    assert fetch_bytes(host.url("/ok/z"), **FAST_FETCH) == png_bytes((len("/ok/z") * 20 % 255, 10, 200))
    with pytest.raises(FetchError) as missing:
        fetch_bytes(host.url("/missing"), **FAST_FETCH)
    assert (missing.value.reason, missing.value.detail, missing.value.retryable) == ("http_404", "HTTP 404", False)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on this port any more
    with pytest.raises(FetchError) as refused:
        fetch_bytes(f"http://127.0.0.1:{port}/x", **FAST_FETCH)
    assert (refused.value.reason, refused.value.detail) == ("connection_error", "Connection refused")
