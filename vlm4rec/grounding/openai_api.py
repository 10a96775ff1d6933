"""``openai`` grounder: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, llama.cpp,
Ollama, OpenAI), or a fleet of them, with each image sent inline as a base64 JPEG data URL.

Requests run ``concurrency`` at a time and are spread round-robin over the servers of ``base_url`` (one
URL or a list, e.g. one vLLM server per GPU node). 429, 5xx, timeouts and connection errors are retried
(``max_retries`` times per request); each failure takes its server out for a back-off period
(``backoff_s * 2**(k-1)`` after its k-th failure in a row, or the server's ``Retry-After``), during which its
requests go to the other servers. Other HTTP errors and malformed responses fail at once with a message
naming what is wrong. Connections that cannot be opened at all (refused, name not resolved) are counted
apart from overload: once every server has failed ``max_connection_failures`` connections in a row, the
run stops with :class:`~vlm4rec.grounding.base.GroundingStopped` instead of spending every retry of
every item on a dead address. Requests, answers and failures per server are in :meth:`usage`.

The API key is read from the environment variable NAMED by ``api_key_env`` at each request and sent as a
Bearer header; it is never stored on the object, in ``settings()``, the cache, reprs or error messages:
server text quoted in errors is scrubbed of it before it is cut short, and so are descriptions (a server
that echoes the key does not get it into the cache), in every spelling a server may echo it
(JSON-escaped, URL-encoded, base64 of the header value: :func:`vlm4rec.secrets.redact`). No variable set:
no Authorization header.
"""
from __future__ import annotations

import base64
import email.utils
import io
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from PIL import Image
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from vlm4rec.config import OpenAIParams
from vlm4rec.errors import StudyError, os_reason
from vlm4rec.grounding.base import Grounder, GroundingError, GroundingStopped
from vlm4rec.secrets import redact

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 120.0
JPEG_QUALITY = 90


class OpenAIGrounder(Grounder):
    """Chat-completions client configured by ``params.yaml: ground.openai``
    (:class:`~vlm4rec.config.OpenAIParams`); its ``model`` is the server's model name (the cache's model id).

    ``base_url``: one server or a list of servers that serve the same model. ``prefer_first``: send every
    request to the first server while it is in (the next ones take over while it is out) instead of
    spreading them; a Ray actor pinned to its own server uses it.
    """

    grounder_id = "openai"
    description_of_method = "openai (vision-language model behind an OpenAI-compatible chat-completions API)"

    def __init__(self, params: OpenAIParams, prefer_first: bool = False):
        if not params.base_url or not params.model:
            raise StudyError("the openai grounder needs ground.openai.base_url (a URL or a list of them) and "
                             "ground.openai.model")
        urls = [params.base_url] if isinstance(params.base_url, str) else list(params.base_url)
        self.params = params
        self.fleet = ServerFleet(urls, params.backoff_s, params.max_connection_failures, prefer_first)
        self._sessions = threading.local()

    @property
    def batch_size(self) -> int:
        return self.params.batch_size

    @property
    def model_id(self) -> str:
        return self.params.model

    def settings(self) -> dict[str, Any]:
        return {"max_tokens": self.params.max_new_tokens, "temperature": self.params.temperature,
                "jpeg_quality": JPEG_QUALITY}

    def usage(self) -> dict[str, Any]:
        return {"servers": self.fleet.counts()}

    def describe(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        outcomes = self.describe_outcomes(images, prompts)
        for outcome in outcomes:
            if isinstance(outcome, GroundingError):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def describe_outcomes(self, images: list[Image.Image], prompts: list[str]) -> list[str | GroundingError]:
        """Independent requests, ``concurrency`` at a time; a failed one yields its error in its slot.
        Raises :class:`GroundingStopped` when every server is unreachable."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        with ThreadPoolExecutor(max_workers=self.params.concurrency) as pool:
            return list(pool.map(self._describe_one, images, prompts))

    def _describe_one(self, image: Image.Image, prompt: str) -> str | GroundingError:
        try:
            return _content_of(self._post_with_retries(self.request_body(image, prompt)), self._redact)
        except GroundingError as err:
            return GroundingError(err.kind, self._redact(err.reason))

    def request_body(self, image: Image.Image, prompt: str) -> dict[str, Any]:
        """The chat-completions JSON body for one image and prompt."""
        return {"model": self.params.model, "max_tokens": self.params.max_new_tokens,
                "temperature": self.params.temperature, "messages": [{"role": "user", "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": jpeg_data_url(image)}}]}]}

    def _post_with_retries(self, body: dict[str, Any]) -> Any:
        """The decoded JSON of a successful response, retrying transient failures on the fleet."""
        last = ""
        for _ in range(self.params.max_retries + 1):
            self._stop_if_unreachable()
            server, wait = self.fleet.choose()
            if wait > 0:
                time.sleep(wait)
            try:
                response = self._session().post(server.endpoint, json=body, headers=self._headers(),
                                                timeout=self.params.timeout_s)
            except requests.ConnectionError as err:
                unreachable = _connect_failure(err, self.params.timeout_s)
                last = f"{server.url}: connection failed: {unreachable or type(err).__name__}"
                self.fleet.failed(server, connection_failure=unreachable)
                continue
            except requests.Timeout:
                last = f"{server.url}: no response within {self.params.timeout_s} s"
                self.fleet.failed(server)
                continue
            if response.status_code == 200:
                self.fleet.answered(server)
                return _json_of(response, self._redact)
            snippet = self._redact(response.text)[:300]
            if response.status_code not in RETRY_STATUSES:
                self.fleet.answered(server, ok=False)
                raise GroundingError(f"http_{response.status_code}",
                                     f"{server.endpoint} answered HTTP {response.status_code}: {snippet}")
            last = f"{server.url}: HTTP {response.status_code}: {snippet}"
            self.fleet.failed(server, retry_after=_retry_after_s(response))
        self._stop_if_unreachable()
        raise GroundingError("retries_exhausted", f"failed {self.params.max_retries + 1} times; last: {last}")

    def _stop_if_unreachable(self) -> None:
        reason = self.fleet.unreachable()
        if reason is not None:
            raise GroundingStopped(self._redact(reason))

    def _session(self) -> requests.Session:
        """One keep-alive session per worker thread (sessions are not thread-safe)."""
        if not hasattr(self._sessions, "session"):
            self._sessions.session = requests.Session()
        return self._sessions.session

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.params.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.params.api_key_env)
        return redact(text, key) if key else text


@dataclass(eq=False)
class Server:
    """One server of a fleet: where it is, whether it is out (until ``out_until``), its failure streaks."""

    url: str
    endpoint: str
    out_until: float = 0.0
    failures_in_a_row: int = 0
    connection_failures_in_a_row: int = 0
    connection_error: str = ""
    counts: Counter[str] = field(default_factory=Counter)


class ServerFleet:
    """The servers requests go to, shared by a grounder's request threads.

    :meth:`choose` picks a server that is in (round-robin, or the first in order with ``prefer_first``),
    or, when all are out, the one back soonest with the wait until then. A failed attempt takes its server
    out for ``backoff_s * 2**(k-1)`` after its k-th failure in a row (capped at :data:`MAX_BACKOFF_S`) or
    for the server's Retry-After; an answer brings its streaks back to zero. A connection that could not be
    opened extends the server's connection-failure streak; the fleet is unreachable when every server's
    streak has reached ``max_connection_failures``.
    """

    def __init__(self, urls: Sequence[str], backoff_s: float, max_connection_failures: int,
                 prefer_first: bool = False):
        self.servers = [Server(url, url.rstrip("/") + "/chat/completions") for url in urls]
        self.backoff_s, self.max_connection_failures = backoff_s, max_connection_failures
        self.prefer_first = prefer_first
        self._lock = threading.Lock()
        self._next = 0

    def choose(self) -> tuple[Server, float]:
        """A server and the seconds to wait before sending to it (0 when it is in)."""
        with self._lock:
            now = time.monotonic()
            start = 0 if self.prefer_first else self._next
            ring = self.servers[start:] + self.servers[:start]
            ready = [server for server in ring if server.out_until <= now]
            server = ready[0] if ready else min(ring, key=lambda s: s.out_until)
            self._next = (self.servers.index(server) + 1) % len(self.servers)
            server.counts["requests"] += 1
            return server, max(server.out_until - now, 0.0)

    def answered(self, server: Server, ok: bool = True) -> None:
        """The server sent an answer that is no reason to retry (a success, or a final HTTP error)."""
        with self._lock:
            server.failures_in_a_row = server.connection_failures_in_a_row = 0
            server.counts["ok" if ok else "http_errors"] += 1

    def failed(self, server: Server, retry_after: float | None = None, connection_failure: str | None = None) -> None:
        """A retryable failure: the server is out for a while; ``connection_failure`` says why no
        connection could be opened (None: the server was reached but overloaded, slow or dropped us)."""
        with self._lock:
            server.failures_in_a_row += 1
            if connection_failure is None:
                server.connection_failures_in_a_row = 0
                server.counts["retryable_failures"] += 1
            else:
                server.connection_failures_in_a_row += 1
                server.connection_error = connection_failure
                server.counts["connection_failures"] += 1
            out = retry_after if retry_after is not None else self.backoff_s * 2 ** (server.failures_in_a_row - 1)
            server.out_until = time.monotonic() + min(max(out, 0.0), MAX_BACKOFF_S)
            server.counts["taken_out"] += 1

    def unreachable(self) -> str | None:
        """Why the fleet is unreachable, or None while some server may still answer."""
        with self._lock:
            if any(s.connection_failures_in_a_row < self.max_connection_failures for s in self.servers):
                return None
            if len(self.servers) == 1:
                return f"server unreachable at {self.servers[0].url}: {self.servers[0].connection_error}"
            return f"all {len(self.servers)} servers unreachable: " + "; ".join(
                f"{s.url}: {s.connection_error}" for s in self.servers)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per server URL: requests sent, ok answers, final HTTP errors, retryable failures, connection
        failures and times taken out."""
        with self._lock:
            return {s.url: {name: s.counts[name] for name in
                            ("requests", "ok", "http_errors", "retryable_failures", "connection_failures",
                             "taken_out")} for s in self.servers}


def _connect_failure(err: requests.ConnectionError, timeout_s: float) -> str | None:
    """Why no connection could be opened (refused, name not resolved, connect timeout), or None when the
    connection was opened and then failed (the server is there: overload, not unreachability)."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    detail = os_reason(err)
    if isinstance(reason, NameResolutionError):
        return f"name resolution failed ({detail})"
    if isinstance(reason, NewConnectionError):
        return detail.lower()
    if isinstance(reason, ConnectTimeoutError):
        return f"no connection within {timeout_s} s"
    return None


def jpeg_data_url(image: Image.Image) -> str:
    """``data:image/jpeg;base64,...`` of the RGB image at :data:`JPEG_QUALITY`."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _retry_after_s(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header given as seconds or as an HTTP date; None without one."""
    if "Retry-After" not in response.headers:
        return None
    value = response.headers["Retry-After"].strip()
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return when.timestamp() - time.time() if when else 0.0


def _json_of(response: requests.Response, redact: Callable[[str], str]) -> Any:
    try:
        return response.json()
    except ValueError:
        raise GroundingError("malformed_response",
                             f"response is not JSON: {redact(response.text)[:200]!r}") from None


def _content_of(payload: Any, redact: Callable[[str], str]) -> str:
    """choices[0].message.content as text; a clear error naming the first missing piece."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
        raise GroundingError("malformed_response", f"response has no 'choices' list: {redact(str(payload))[:200]}")
    choice = payload["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or "content" not in message:
        raise GroundingError("malformed_response",
                             f"response has no choices[0].message.content: {redact(str(choice))[:200]}")
    content = message["content"]
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise GroundingError("empty_response", f"choices[0].message.content is empty "
                             f"(finish_reason={redact(str(choice.get('finish_reason')))!r})")
    return redact(content.strip())
