"""``openai`` grounder: any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, llama.cpp,
Ollama, OpenAI) with each image sent inline as a base64 JPEG data URL.

Requests run ``concurrency`` at a time. 429, 5xx, timeouts and connection errors are retried with
exponential backoff (``backoff_s * 2**attempt``, or the server's ``Retry-After`` when it sends one);
other HTTP errors and malformed responses fail at once with a message naming what is wrong.

The API key is read from the environment variable NAMED by ``api_key_env`` at each request and sent as a
Bearer header; it is never stored on the object, in ``settings()``, the cache, reprs or error messages
(server text quoted in errors is scrubbed of it). No variable set: no Authorization header (local servers).
"""
from __future__ import annotations

import base64
import email.utils
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from PIL import Image

from vlm4rec.grounding.base import Grounder, GroundingError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 120.0
JPEG_QUALITY = 90


class OpenAIGrounder(Grounder):
    """Chat-completions client; ``model`` is the server's model name (it is the cache's model id)."""

    grounder_id = "openai"
    description_of_method = "openai (vision-language model behind an OpenAI-compatible chat-completions API)"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 128,
                 temperature: float = 0.0, concurrency: int = 4, max_retries: int = 5, backoff_s: float = 1.0,
                 timeout_s: float = 60, batch_size: int = 32):
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be >= 1 and max_retries >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff_s, self.timeout_s = backoff_s, timeout_s
        self.batch_size = batch_size
        self._sessions = threading.local()

    @property
    def model_id(self) -> str:
        return self.model

    def settings(self) -> dict[str, Any]:
        return {"max_tokens": self.max_new_tokens, "temperature": self.temperature, "jpeg_quality": JPEG_QUALITY}

    def describe(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        outcomes = self.describe_outcomes(images, prompts)
        for outcome in outcomes:
            if isinstance(outcome, GroundingError):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def describe_outcomes(self, images: list[Image.Image], prompts: list[str]) -> list[str | GroundingError]:
        """Independent requests, ``concurrency`` at a time; a failed one yields its error in its slot."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._describe_one, images, prompts))

    def _describe_one(self, image: Image.Image, prompt: str) -> str | GroundingError:
        try:
            return _content_of(self._post_with_retries(self.request_body(image, prompt)))
        except GroundingError as err:
            return GroundingError(err.kind, self._redact(err.reason))

    def request_body(self, image: Image.Image, prompt: str) -> dict[str, Any]:
        """The chat-completions JSON body for one image and prompt."""
        return {"model": self.model, "max_tokens": self.max_new_tokens, "temperature": self.temperature,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": jpeg_data_url(image)}}]}]}

    def _post_with_retries(self, body: dict[str, Any]) -> Any:
        """The decoded JSON of a successful response, retrying transient failures."""
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * 2 ** attempt
            try:
                response = self._session().post(self.url, json=body, headers=self._headers(), timeout=self.timeout_s)
            except requests.Timeout:
                last = f"no response within {self.timeout_s} s"
            except requests.ConnectionError as err:
                last = f"connection failed: {type(err).__name__}"
            else:
                if response.status_code == 200:
                    return _json_of(response)
                snippet = response.text[:300]
                if response.status_code not in RETRY_STATUSES:
                    raise GroundingError(f"http_{response.status_code}",
                                         f"{self.url} answered HTTP {response.status_code}: {snippet}")
                last = f"HTTP {response.status_code}: {snippet}"
                wait = _retry_after_s(response) if "Retry-After" in response.headers else wait
            if attempt < self.max_retries:
                time.sleep(min(max(wait, 0.0), MAX_BACKOFF_S))
        raise GroundingError("retries_exhausted", f"{self.url} failed {self.max_retries + 1} times; last: {last}")

    def _session(self) -> requests.Session:
        """One keep-alive session per worker thread (sessions are not thread-safe)."""
        if not hasattr(self._sessions, "session"):
            self._sessions.session = requests.Session()
        return self._sessions.session

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text


def jpeg_data_url(image: Image.Image) -> str:
    """``data:image/jpeg;base64,...`` of the RGB image at :data:`JPEG_QUALITY`."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _retry_after_s(response: requests.Response) -> float:
    """Seconds from a Retry-After header given as seconds or as an HTTP date."""
    value = response.headers["Retry-After"].strip()
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return when.timestamp() - time.time() if when else 0.0


def _json_of(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise GroundingError("malformed_response", f"response is not JSON: {response.text[:200]!r}") from None


def _content_of(payload: Any) -> str:
    """choices[0].message.content as text; a clear error naming the first missing piece."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
        raise GroundingError("malformed_response", f"response has no 'choices' list: {str(payload)[:200]}")
    choice = payload["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or "content" not in message:
        raise GroundingError("malformed_response", f"response has no choices[0].message.content: {str(choice)[:200]}")
    content = message["content"]
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise GroundingError("empty_response", f"choices[0].message.content is empty "
                             f"(finish_reason={choice.get('finish_reason')!r})")
    return content.strip()
