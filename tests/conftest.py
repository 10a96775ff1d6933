"""Fixtures shared by the test modules: loopback HTTP servers and URLs where nothing listens."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture()
def loopback() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    """Serve a handler class on 127.0.0.1 from a background thread: ``loopback(Handler)`` returns the base
    URL (``http://127.0.0.1:PORT``); every server started this way is shut down after the test."""
    servers: list[ThreadingHTTPServer] = []

    def serve(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def refused_url() -> Callable[[str], str]:
    """``refused_url(path)``: a loopback URL on a port just freed, where connections are refused."""

    def url(path: str = "") -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return f"http://127.0.0.1:{port}{path}"

    return url
