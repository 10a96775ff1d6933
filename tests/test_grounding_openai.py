"""OpenAIGrounder against real HTTP servers on 127.0.0.1 that play scripted responses."""
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study_params import section
from vlm4rec.config import OpenAIParams
from vlm4rec.errors import StudyError
from vlm4rec.grounding import openai_api
from vlm4rec.grounding.base import GroundingError, GroundingStopped
from vlm4rec.grounding.cache import DescriptionCache
from vlm4rec.grounding.openai_api import OpenAIGrounder
from vlm4rec.grounding.runner import ground_items

KEY_ENV, KEY = "VLM4REC_TEST_KEY", "sk-test-SECRET-0123456789"
IMAGE = Image.new("RGB", (6, 4), (200, 30, 30))


def completion(text):
    return {"id": "x", "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}


class ScriptedServer:
    """Answers POST /v1/chat/completions with the next scripted action; default: a completion.

    Actions: ("json", payload), ("status", code, headers), ("raw", bytes), ("sleep", seconds, payload),
    ("echo_auth", code) (an error body quoting the Authorization header), ("body", code, text), ("barrier", n)
    (wait until n requests are in flight, proving concurrency).
    """

    def __init__(self, serve, script=()):
        self.script, self.requests, self.lock = list(script), [], threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.barrier = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = server.script.pop(0) if server.script else ("json", completion("a red poster"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self.act(action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def act(self, action):
                kind = action[0]
                if kind == "barrier":
                    server.barrier.wait(timeout=5)
                    return self.reply(200, json.dumps(completion("together")).encode())
                if kind == "sleep":
                    time.sleep(action[1])
                    return self.reply(200, json.dumps(action[2]).encode())
                if kind == "json":
                    return self.reply(200, json.dumps(action[1]).encode())
                if kind == "raw":
                    return self.reply(200, action[1])
                if kind == "echo_auth":
                    return self.reply(action[1], f"bad key {self.headers.get('Authorization')}".encode())
                if kind == "body":
                    return self.reply(action[1], action[2].encode())
                return self.reply(action[1], b'{"error": "busy"}', action[2] if len(action) > 2 else {})

            def reply(self, code, payload, headers=None):
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.url = serve(Handler) + "/v1"


@pytest.fixture
def server(loopback):
    """``server(script)`` starts a ScriptedServer on 127.0.0.1 (stopped after the test)."""
    return lambda script=(): ScriptedServer(loopback, script)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def openai_options(base_url, **changes) -> dict:
    """``ground.openai`` keys for ``base_url`` with fast test settings, ``changes`` applied."""
    return {"base_url": base_url, "model": "vlm-test", "api_key_env": KEY_ENV, "max_new_tokens": 32,
            "temperature": 0.0, "concurrency": 2, "max_retries": 3, "backoff_s": 0.001, "timeout_s": 2,
            "batch_size": 32, "max_connection_failures": 3} | changes


def grounder(url, prefer_first=False, **changes):
    return OpenAIGrounder(OpenAIParams(**openai_options(url, **changes)), prefer_first)


def test_request_format_and_success(server):
    s = server()
    assert grounder(s.url + "/").describe([IMAGE], ["Describe it."]) == ["a red poster"]
    request = s.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("vlm-test", 32, 0.0)
    text, image = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "Describe it."}
    prefix = "data:image/jpeg;base64,"
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith(prefix)
    decoded = Image.open(io.BytesIO(base64.b64decode(image["image_url"]["url"][len(prefix):])))
    assert decoded.format == "JPEG" and decoded.size == (6, 4)
    assert np.abs(np.asarray(decoded).astype(int) - [200, 30, 30]).max() < 10


def test_no_key_variable_means_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    s = server()
    grounder(s.url).describe([IMAGE], ["x"])
    assert "Authorization" not in s.requests[0]["headers"]


@pytest.mark.parametrize("first", [("status", 429, {"Retry-After": "0"}), ("status", 500), ("status", 503)])
def test_transient_errors_are_retried(server, first):
    s = server([first])
    assert grounder(s.url).describe([IMAGE], ["x"]) == ["a red poster"]
    assert len(s.requests) == 2


def test_backoff_is_exponential_and_retry_after_is_honoured(server, monkeypatch):
    waits = []
    monkeypatch.setattr(openai_api.time, "sleep", waits.append)
    s = server([("status", 500), ("status", 502), ("status", 429, {"Retry-After": "7"})])
    assert grounder(s.url, backoff_s=0.5).describe([IMAGE], ["x"]) == ["a red poster"]
    assert waits == pytest.approx([0.5, 1.0, 7.0], abs=0.05)  # the server's out period, less the time spent


def test_timeout_then_success_and_timeout_exhausted(server):
    s = server([("sleep", 1.0, completion("late"))])
    assert grounder(s.url, timeout_s=0.2).describe([IMAGE], ["x"]) == ["a red poster"]
    s = server([("sleep", 1.0, completion("late"))] * 2)
    with pytest.raises(GroundingError, match=r"retries_exhausted: failed 2 times; last: http://127.*: no response within 0.2 s"):
        grounder(s.url, timeout_s=0.2, max_retries=1).describe([IMAGE], ["x"])


@pytest.mark.parametrize("action, kind, message", [
    (("raw", b"<html>gateway</html>"), "malformed_response", "response is not JSON"),
    (("json", {"object": "error"}), "malformed_response", "response has no 'choices' list"),
    (("json", {"choices": [{"message": {"role": "assistant"}}]}), "malformed_response",
     r"no choices\[0\].message.content"),
    (("json", completion("")), "empty_response", r"content is empty \(finish_reason='stop'\)"),
    (("status", 400), "http_400", "answered HTTP 400"),
])
def test_bad_responses_fail_at_once_with_a_clear_reason(server, action, kind, message):
    s = server([action])
    with pytest.raises(GroundingError, match=message) as info:
        grounder(s.url).describe([IMAGE], ["x"])
    assert info.value.kind == kind and len(s.requests) == 1


def test_requests_run_concurrently_and_keep_their_order(server):
    s = server([("barrier", 3)] * 3)
    s.barrier = threading.Barrier(3)
    images = [IMAGE, IMAGE.resize((8, 8)), IMAGE.resize((10, 10))]
    assert grounder(s.url, concurrency=3).describe(images, ["a", "b", "c"]) == ["together"] * 3
    assert s.max_in_flight == 3


def test_outcomes_isolate_a_failing_request(server):
    s = server([("status", 400)])
    outcomes = grounder(s.url, concurrency=1).describe_outcomes([IMAGE, IMAGE], ["a", "b"])
    assert isinstance(outcomes[0], GroundingError) and outcomes[1] == "a red poster"


def test_key_never_leaks(server, tmp_path):
    s = server([("echo_auth", 401)])
    g = grounder(s.url, concurrency=1)
    assert KEY not in json.dumps(g.settings()) and KEY not in repr(g) and KEY not in str(vars(g))
    with pytest.raises(GroundingError) as info:
        g.describe([IMAGE], ["x"])
    assert "bad key Bearer ***" in str(info.value) and KEY not in str(info.value)

    IMAGE.save(tmp_path / "a.png")
    Image.new("RGB", (5, 5), (0, 0, 255)).save(tmp_path / "b.png")
    s.script = [("echo_auth", 403)]
    items = pd.DataFrame({"item_idx": [0, 1], "item_id": ["a", "b"], "title": ["A", "B"],
                          "image_path": [str(tmp_path / "a.png"), str(tmp_path / "b.png")], "has_image": True})
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(items, g, cache, "image_only", progress=False)
    assert sorted(result.table["status"]) == ["failed", "ok"]
    assert KEY not in result.table.to_csv()
    for path in tmp_path.glob("cache.sqlite*"):
        assert KEY.encode() not in path.read_bytes()


def test_build_grounder_from_its_section():
    from vlm4rec.grounding import build_grounder

    built = build_grounder(OpenAIParams(**openai_options("http://127.0.0.1:9/v1")), prefer_first=True)
    assert isinstance(built, OpenAIGrounder) and built.fleet.prefer_first
    assert [s.endpoint for s in built.fleet.servers] == ["http://127.0.0.1:9/v1/chat/completions"]
    with pytest.raises(StudyError, match=r"^the openai grounder needs ground.openai.base_url \(a URL or a list of "
                                         r"them\) and ground.openai.model$"):
        build_grounder(OpenAIParams(**openai_options([])))
    with pytest.raises(TypeError, match="^EvalParams configures no grounder"):
        build_grounder(section("eval"))


# ---- fleets, unreachable servers, the key in echoed text ------------------------------------------

def poster_items(tmp_path, n):
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (5, 5), (10 * i, 0, 0)).save(paths[-1])
    return pd.DataFrame({"item_idx": range(n), "item_id": [f"i{i}" for i in range(n)],
                         "title": [f"T{i}" for i in range(n)], "image_path": paths, "has_image": True})


def test_closed_port_stops_the_run_at_once_with_counts(server, refused_url, tmp_path):
    live = server()
    items = poster_items(tmp_path, 4)
    dead = refused_url("/v1")
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        ground_items(items[:1], grounder(live.url), cache, "image_only", progress=False)
        started = time.perf_counter()
        with pytest.raises(StudyError, match=rf"^server unreachable at {dead}: connection refused; "
                                             r"1 of 4 described; rerun resumes from the cache$"):
            ground_items(items, grounder(dead, max_retries=5, backoff_s=0.05, max_connection_failures=3), cache,
                         "image_only", progress=False)
    assert time.perf_counter() - started < 2  # 3 refused connections, not 6 attempts for each of 3 items


def test_unknown_host_is_unreachable_too():
    g = grounder("http://no-such-host.invalid/v1", max_connection_failures=1)
    with pytest.raises(GroundingStopped, match="unreachable at http://no-such-host.invalid/v1: name resolution"):
        g.describe([IMAGE], ["x"])


def test_overload_never_counts_as_unreachable(server):
    s = server([("status", 503)] * 4)
    with pytest.raises(GroundingError, match=r"retries_exhausted: failed 4 times; last: .*HTTP 503"):
        grounder(s.url, max_connection_failures=1).describe([IMAGE], ["x"])


@pytest.mark.parametrize("failing", ["closed", "overloaded"])
def test_fleet_moves_a_failing_servers_share_to_the_other(server, refused_url, tmp_path, failing):
    good = server()
    bad_url = refused_url("/v1") if failing == "closed" else server([("status", 503)] * 100).url
    g = grounder([bad_url, good.url], concurrency=2, backoff_s=30)
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(poster_items(tmp_path, 8), g, cache, "image_only", progress=False)
    assert (result.table["status"] == "ok").all()
    servers = result.counts["usage"]["servers"]
    bad, ok = servers[bad_url], servers[good.url]
    failures = bad["connection_failures"] if failing == "closed" else bad["retryable_failures"]
    assert 1 <= bad["requests"] == failures == bad["taken_out"] <= 2 and bad["ok"] == 0
    assert ok["ok"] == ok["requests"] == 8 == len(good.requests)


def test_every_server_of_a_fleet_unreachable(refused_url):
    first, second = refused_url("/v1"), refused_url("/v1")
    with pytest.raises(GroundingStopped, match=rf"^all 2 servers unreachable: {first}: connection refused; "
                                               rf"{second}: connection refused$"):
        grounder([first, second], backoff_s=0.01, max_retries=10).describe([IMAGE] * 3, ["x"] * 3)


def test_prefer_first_keeps_requests_on_the_first_server_while_it_is_in(server):
    first, second = server(), server()
    grounder([first.url, second.url], prefer_first=True).describe([IMAGE] * 4, ["x"] * 4)
    assert (len(first.requests), len(second.requests)) == (4, 0)


def test_key_is_redacted_before_error_text_is_cut_and_in_descriptions(server, tmp_path):
    # Cut first, the error texts below would keep the key's first 5 characters (at 300 and at 200).
    s = server([("body", 400, "x" * 295 + KEY), ("json", completion(f"poster; key {KEY}")),
                ("json", {"choices": [{"echo": "y" * 185 + KEY, "message": {"role": "assistant"}}]})])
    g = grounder(s.url, concurrency=1)
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(poster_items(tmp_path, 3), g, cache, "image_only", progress=False)
    assert result.table["status"].tolist() == ["failed", "ok", "failed"]
    assert result.table["description"][1] == "poster; key ***"
    text = result.table.to_csv() + json.dumps(result.counts) + json.dumps(g.usage()) + repr(g)
    assert "***" in result.table["error"][0] and KEY[:5] not in text
    for path in tmp_path.glob("cache.sqlite*"):
        assert KEY[:5].encode() not in path.read_bytes()


SLASHED_KEY = "sk-ab/cd+ef=gh-0123456789"


def test_a_base64_echo_of_the_authorization_header_is_redacted_in_errors(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SLASHED_KEY)
    echoed = base64.b64encode(f"Bearer {SLASHED_KEY}".encode()).decode()
    s = server([("body", 400, f"bad token {echoed}")])
    with pytest.raises(GroundingError) as info:
        grounder(s.url, concurrency=1).describe([IMAGE], ["x"])
    assert "bad token " in str(info.value) and echoed[8:] not in str(info.value) and "***" in str(info.value)


def test_a_key_quoted_with_json_escapes_inside_an_answer_stays_out_of_descriptions(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SLASHED_KEY)
    quoted = json.dumps({"key": SLASHED_KEY}).replace("/", "\\u002f")
    s = server([("json", completion(f"poster; {quoted}"))])
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(poster_items(tmp_path, 1), grounder(s.url, concurrency=1), cache, "image_only",
                              progress=False)
    assert result.table["description"][0] == 'poster; {"key": "***"}'
    for path in tmp_path.glob("cache.sqlite*"):
        assert b"gh-0123456789" not in path.read_bytes()
