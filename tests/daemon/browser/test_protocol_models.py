"""The browser commands' schemas (protocol/commands/browser.py), without an event loop."""

from __future__ import annotations

import json
import math
import re

import pytest
from pydantic import ValidationError

from protocol import ErrorCode
from protocol.commands import REGISTRY, get
from protocol.commands.browser import (
    MAX_SCRIPT_BYTES,
    BrowserErrorCode,
    BrowserJsParams,
    BrowserJsResult,
    PersonaScreenshotResult,
    ScreenshotParams,
    ScreenshotResult,
)
from protocol.commands.registry import register_variant
from protocol.schema import export
from tests.conftest import REPO


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "chrome://settings",
        "data:text/html,x",
        "http://",
        "ftp://x/",
    ],
)
def test_only_web_urls_and_about_blank_are_accepted(url: str) -> None:
    """file:, javascript:, chrome:, data: and malformed URLs are refused; http(s) and about:blank pass."""
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL, or about:blank"):
        ScreenshotParams(url=url)
    for ok in ("http://127.0.0.1:8000/a?b#c", "HTTPS://example.org", "about:blank"):
        assert ok == BrowserJsParams(script="1", url=ok).url


def test_params_bounds_and_consistency() -> None:
    """Viewport and timeout bounds, full_page xor selector, quality only for jpeg, unknown members refused."""
    for bad in (
        {"viewport": {"width": 15, "height": 100}},
        {"viewport": {"width": 100, "height": 4097}},
        {"full_page": True, "selector": "#a"},
        {"quality": 80},
        {"format": "gif"},
        {"selector": ""},
        {"max_tokens": 1},
    ):
        with pytest.raises(ValidationError):
            ScreenshotParams.model_validate(bad)
    assert 80 == ScreenshotParams.model_validate({"format": "jpeg", "quality": 80}).quality
    with pytest.raises(ValidationError):
        BrowserJsParams(script="1", timeout_ms=120_001)
    with pytest.raises(ValidationError):
        BrowserJsParams(script="")


def test_the_script_limit_counts_utf8_bytes() -> None:
    """64 KiB of UTF-8, not of characters: 'é' counts twice."""
    BrowserJsParams(script="x" * MAX_SCRIPT_BYTES)
    with pytest.raises(ValidationError, match="over 65536 bytes"):
        BrowserJsParams(script="é" * (MAX_SCRIPT_BYTES // 2 + 1))


def test_one_method_two_servers() -> None:
    """screenshot and browser_js: the provider's result is primary, the persona's a registered variant."""
    assert ScreenshotResult is REGISTRY["screenshot"].result
    assert "cap:browser" == REGISTRY["screenshot"].served_by
    persona = get("screenshot", served_by="persona")
    assert (PersonaScreenshotResult, ScreenshotParams, "persona") == (
        persona.result,
        persona.params,
        persona.served_by,
    )
    assert get("screenshot", served_by="cap:browser") is REGISTRY["screenshot"]
    assert BrowserJsResult is get("browser_js", served_by="persona").result
    assert (
        get("browser.navigate", served_by="persona") is REGISTRY["browser.navigate"]
    )  # no variant: the primary
    doc = json.loads(json.dumps(export()))
    assert {"persona"} == set(doc["commands"]["screenshot"]["variants"])
    assert "path" in doc["commands"]["screenshot"]["variants"]["persona"]["result"]["properties"]
    assert "variants" not in doc["commands"]["browser.navigate"]
    with pytest.raises(ValueError, match="already has a variant"):
        register_variant("screenshot", served_by="persona", result=ScreenshotResult, summary="again")
    with pytest.raises(ValueError, match="register 'nope' before"):
        register_variant("nope", served_by="persona", result=ScreenshotResult, summary="x")


def test_browser_error_codes_are_application_codes() -> None:
    """Outside JSON-RPC's reserved -32768..-32000 and distinct from every bus code."""
    for code in BrowserErrorCode:
        assert not -32768 <= code <= -32000
        assert code.description
    assert not {int(c) for c in BrowserErrorCode} & {int(c) for c in ErrorCode}


def test_the_extension_speaks_the_same_codes() -> None:
    """extension/protocol.js mirrors ErrorCode and BrowserErrorCode exactly."""
    source = (REPO / "extension" / "protocol.js").read_text()

    def table(name: str) -> dict[str, int]:
        body = re.search(name + r" = Object\.freeze\(\{(.*?)\}\)", source, re.S)
        assert body is not None, name
        return {k: int(v) for k, v in re.findall(r"(\w+): (-?\d+)", body.group(1))}

    assert {c.name: int(c) for c in BrowserErrorCode} == table("BrowserErrorCode")
    js_codes = table("ErrorCode")
    assert {name: int(ErrorCode[name]) for name in js_codes} == js_codes
    for constant in ("MAX_SCRIPT_BYTES", "MAX_VIEWPORT", "MIN_VIEWPORT", "MAX_SCRIPT_TIMEOUT_MS"):
        import protocol.commands.browser as browser

        js_value = re.search(rf"export const {constant} = ([\d_ *]+);", source)
        assert js_value is not None, constant
        factors = js_value.group(1).replace("_", "").split("*")
        assert getattr(browser, constant) == math.prod(int(f) for f in factors)
