"""The model server's API key: params.yaml names the environment variable that holds it (never the key), and
every spelling of the key a server may echo is removed from what it answered before anything is kept.

A value of ``ground.openai.api_key_env`` that looks like a key rather than a variable's name is refused when
params.yaml is validated, before any stage writes a file (DVC writes ``dvc.lock`` only after a stage
succeeds; the notebook is rendered after the validation), and the refusal does not repeat the value.
"""
from __future__ import annotations

import base64
import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

REDACTED = "***"
#: Shortest base64 core of a secret that is redacted (shorter strings occur by chance in any text).
MIN_BASE64_FORM = 8
#: The pydantic error type of a refused key variable: its message is shown without the value.
SECRET_ERROR = "secret_value"
_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")
#: Beginnings of keys of common services (OpenAI, Hugging Face, GitHub, Slack, AWS, Google, GitLab).
KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "github_pat_", "xox", "AKIA", "ASIA", "AIza", "glpat-")


def key_variable(name: str) -> str:
    """``ground.openai.api_key_env`` is the name of an environment variable (``[A-Z_][A-Z0-9_]*``, not starting
    like a key such as ``sk-`` or ``AKIA``), never the key itself; the refusal does not repeat the value."""
    if not _VARIABLE.fullmatch(name) or name.startswith(KEY_PREFIXES):
        raise PydanticCustomError(SECRET_ERROR, "this looks like an API key, not the NAME of the environment "
                                                "variable that holds it (e.g. OPENAI_API_KEY): remove the key "
                                                "from params.yaml, set the variable and name it here")
    return name


#: params.yaml's name of the environment variable holding an API key.
KeyVariable = Annotated[str, AfterValidator(key_variable)]


def redact(text: str, secret: str) -> str:
    """``text`` with every spelling of ``secret`` a server may echo replaced by :data:`REDACTED`: each of its
    characters as itself or escaped (:func:`spelling_pattern`: JSON ``\\uXXXX``, ``\\/``, URL-encoding, in
    any mix), and base64-encoded (standard or URL-safe alphabet) as part of any value, such as the header value
    ``Bearer <secret>``."""
    text = spelling_pattern(secret).sub(REDACTED, text)
    for form in sorted(set(base64_forms(secret)), key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


def spelling_pattern(secret: str) -> re.Pattern[str]:
    """A regular expression matching ``secret`` with each character written as itself or as any escape a
    JSON or URL encoder (or two of them, one inside the other) may write: ``\\uXXXX`` (either hex case,
    behind one or more backslashes), a backslash before ``/``, ``"`` or ``\\``, ``%XX`` of its UTF-8 bytes
    (either case; ``%25XX`` re-encoded), ``+`` for a space; any character may be spelt differently from the
    next."""
    return re.compile("".join(_character_pattern(char) for char in secret))


def _character_pattern(char: str) -> str:
    alternatives = [re.escape(char)]
    if char in '/"\\':
        alternatives.append(r"\\+" + re.escape(char))
    utf16 = char.encode("utf-16-be")
    alternatives.append("".join(r"\\+u" + _any_case(utf16[i:i + 2].hex()) for i in range(0, len(utf16), 2)))
    alternatives.append("".join(r"%(?:25)*" + _any_case(f"{byte:02x}") for byte in char.encode("utf-8")))
    if char == " ":
        alternatives.append(r"\+")
    return "(?:" + "|".join(alternatives) + ")"


def _any_case(hex_digits: str) -> str:
    return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in hex_digits)


def base64_forms(secret: str) -> list[str]:
    """The base64 spellings of ``secret`` inside any longer value that :func:`redact` removes.

    A base64 encoding of a value holding the secret depends on where the secret starts modulo 3 bytes; for
    each of the three offsets, the characters encoding only the secret's own bits are the same in every
    such value, so they are the form to remove."""
    raw = secret.encode("utf-8")
    forms = []
    for offset in range(3):
        first = -(-8 * offset // 6)  # the first character whose 6 bits all come from the secret
        last = 8 * (offset + len(raw)) // 6  # one past the last such character
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * offset + raw).decode("ascii")[first:last]
            if len(core) >= MIN_BASE64_FORM:
                forms.append(core)
    return forms
