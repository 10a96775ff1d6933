"""The API key: refused where its variable's name belongs, redacted in every spelling a server may echo."""
from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from vlm4rec.config import validate_params
from vlm4rec.errors import StudyError
from vlm4rec.secrets import redact
from study_params import RAW, REPO

KEY = "sk-ab/cd+ef=gh-0123456789"


def _every_character(template: str) -> str:
    return "".join(template.format(ord(char)) if template.startswith("\\") else
                   "".join(template.format(byte) for byte in char.encode()) for char in KEY)


@pytest.mark.parametrize("echo", [
    pytest.param(lambda key: json.dumps({"key": key}), id="json"),
    pytest.param(lambda key: json.dumps({"key": key}).replace("/", "\\/"), id="json-escaped-slash"),
    pytest.param(lambda key: key.replace("/", "\\u002f"), id="unicode-escaped-slash"),
    pytest.param(lambda key: key.replace("/", "\\u002F"), id="unicode-escaped-slash-upper-hex"),
    pytest.param(lambda key: _every_character("\\u{:04x}"), id="every-character-unicode-escaped"),
    pytest.param(lambda key: json.dumps(json.dumps({"key": key.replace("/", "\\u002f")})), id="json-in-json"),
    pytest.param(lambda key: "auth=" + urllib.parse.quote(f"Bearer {key}", safe=""), id="url-encoded"),
    pytest.param(lambda key: key.replace("/", "%2f"), id="url-encoded-slash-lower-hex"),
    pytest.param(lambda key: _every_character("%{:02X}"), id="every-character-url-encoded"),
    pytest.param(lambda key: urllib.parse.quote(urllib.parse.quote(key, safe=""), safe=""), id="url-encoded-twice"),
    pytest.param(lambda key: "auth=" + urllib.parse.quote_plus(f"Bearer {key}"), id="form-encoded"),
    pytest.param(lambda key: key.replace("s", "\\u0073").replace("/", "%2F").replace("+", "%2b").replace("=", "\\u003D"),
                 id="mixed-escapes"),
    pytest.param(lambda key: base64.b64encode(f"Bearer {key}".encode()).decode(), id="base64-header-value"),
    pytest.param(lambda key: base64.b64encode(key.encode()).decode(), id="base64-key"),
    pytest.param(lambda key: base64.urlsafe_b64encode(f"Authorization: Bearer {key}".encode()).decode(),
                 id="urlsafe-base64-header-line"),
    pytest.param(lambda key: base64.b64encode(f"xBearer {key}!".encode()).decode(), id="base64-shifted"),
])
def test_every_spelling_of_the_key_a_server_may_echo_is_redacted(echo) -> None:
    text = f"error: {echo(KEY)} end"
    scrubbed = redact(text, KEY)
    assert scrubbed.count("***") == 1 and scrubbed.startswith("error: ") and scrubbed.endswith(" end"), scrubbed
    assert len(text) - len(scrubbed.replace("***", "")) >= len(KEY)  # the key's whole spelling is gone
    assert "gh-0123456789" not in scrubbed


def test_text_without_the_key_is_left_alone() -> None:
    text = 'an ordinary answer about a poster: {"url": "https:\\/\\/x.org\\u002fa%2Fb"} sk-ab/cd+ef=gh-012345678'
    assert redact(text, KEY) == text


@pytest.mark.parametrize("value", ["sk-live-0123456789abcdef", "hf_AbCdEf0123", "AKIAIOSFODNN7EXAMPLE",
                                   "openai_api_key", "OPENAI API KEY", "0PENAI_KEY", ""])
def test_a_key_where_the_variable_name_belongs_is_refused_without_repeating_it(value: str) -> None:
    raw = copy.deepcopy(RAW)
    raw["ground"]["openai"]["api_key_env"] = value
    with pytest.raises(StudyError, match="ground.openai.api_key_env: this looks like an API key") as info:
        validate_params(raw)
    assert value == "" or value not in str(info.value)


@pytest.mark.parametrize("value", ["OPENAI_API_KEY", "VLLM_KEY_2", "_PRIVATE"])
def test_a_variable_name_is_accepted(value: str) -> None:
    raw = copy.deepcopy(RAW)
    raw["ground"]["openai"]["api_key_env"] = value
    assert validate_params(raw).ground.openai.api_key_env == value


def test_a_refused_key_stops_the_ground_stage_before_anything_is_written(tmp_path: Path) -> None:
    """The runner validates params.yaml before papermill renders the notebook; DVC writes dvc.lock only after
    a stage succeeds, so neither holds the key."""
    raw = copy.deepcopy(RAW)
    raw["ground"]["openai"]["api_key_env"] = "sk-live-0123456789abcdef"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    run = subprocess.run([sys.executable, "-m", "vlm4rec.stage", "ground"], cwd=tmp_path, capture_output=True,
                         text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert run.returncode == 1 and "api_key_env: this looks like an API key" in run.stderr
    assert "0123456789abcdef" not in run.stdout + run.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dvc.yaml", "notebooks", "params.yaml"]
