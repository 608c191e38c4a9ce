"""`personad schema` against an independent validator, and against the decoder (finding 9).

The document must compile in Ajv's strict mode (Node.js, tests/schema/), and
on a corpus of envelopes and of params Ajv and the real decoder/params models
must give the same verdict, which must also be what docs/protocol.md says.
The same envelope corpus goes through a real bus in
tests/e2e/test_raw_client.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from protocol import JSON, REGISTRY
from protocol.errors import DecodeError
from protocol.schema import DIALECT, document
from tests.schema.ajv import ajv_check, envelope_cases

pytestmark = pytest.mark.slow  # runs Node.js


def decoder_accepts(text: str) -> bool:
    try:
        JSON.decode(text)
    except DecodeError:
        return False
    return True


def test_document_is_one_2020_12_schema_that_ajv_strict_compiles() -> None:
    """One 2020-12 document, the envelope at the root, every method in $defs: Ajv strict compiles it."""
    doc = document()
    assert DIALECT == doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    roots = [{"$ref": f"#/$defs/{kind}"} for kind in ("Request", "Notification", "Response")]
    assert roots == doc["oneOf"]
    for name, command in REGISTRY.items():
        assert f"{name}.params" in doc["$defs"], name
        assert (f"{name}.result" in doc["$defs"]) != command.notification, name
    verdict = ajv_check(doc)
    assert len(doc["$defs"]) == verdict["defs"]  # each one compiled on its own too


@pytest.mark.parametrize("broken", ["unknown keyword", "untyped pattern"])
def test_ajv_strict_would_catch_a_sloppy_schema(broken: str) -> None:
    """The check has teeth: Ajv strict refuses what lax validators ignore."""
    doc = document()
    if broken == "unknown keyword":
        doc["$defs"]["Meta"]["served_by"] = "bus"
    else:
        doc["$defs"]["Meta"]["properties"]["trace"] = {"pattern": "^t"}
    with pytest.raises(AssertionError, match="strict mode"):
        ajv_check(doc)


def test_envelopes_agree_with_the_decoder_and_the_docs() -> None:
    """Each envelope of the corpus: Ajv and the decoder agree, and both say what the docs say."""
    cases = envelope_cases()
    verdict = ajv_check(document(), [("#", json.loads(c["text"])) for c in cases])
    disagreements = []
    for case, ajv in zip(cases, verdict["results"], strict=True):
        decoded = decoder_accepts(case["text"])
        schema_expected = True if "schema_cannot_tell" in case else case["valid"]
        if decoded != case["valid"] or ajv["valid"] != schema_expected:
            disagreements.append(f"{case['name']}: docs {case['valid']}, decoder {decoded}, ajv {ajv}")
    assert [] == disagreements


#: (method, params, valid): what the params models and the schema must both say.
PARAMS: list[tuple[str, Any, bool]] = [
    ("hello", {"protocol": 1, "kind": "cli"}, True),
    ("hello", {"protocol": 1, "kind": "cli", "name": None, "token": None, "agent": None}, True),
    ("hello", {"protocol": True, "kind": "cli"}, False),
    ("hello", {"protocol": "1", "kind": "cli"}, False),
    ("hello", {"protocol": 1.5, "kind": "cli"}, False),
    ("hello", {"protocol": 0, "kind": "cli"}, False),
    ("hello", {"protocol": 1, "kind": None}, False),
    ("hello", {"protocol": 1, "kind": "cli", "capabilities": None}, False),
    ("hello", {"protocol": 1, "kind": "cli", "capabilities": ["x"] * 33}, False),
    ("hello", {"protocol": 1, "kind": "cli", "extra": 1}, False),
    ("hello", {"kind": "cli"}, False),
    ("bus.cancel", {"id": "r1"}, True),
    ("bus.cancel", {"id": True}, False),
    ("bus.subscribe", {"topics": ["a.*", "*"]}, True),
    ("bus.subscribe", {"topics": []}, False),
    ("bus.ping", {}, True),
    ("bus.ping", {"verbose": True}, False),
    ("memory.remember", {"content": "x", "relevance": 1}, True),
    ("memory.remember", {"content": "x", "relevance": "0.5"}, False),
    ("memory.remember", {"content": "x", "pinned": 1}, False),
    ("memory.recall", {"limit": 5, "kinds": None}, True),
    ("memory.recall", {"limit": "5"}, False),
    ("memory.recall", {"limit": True}, False),
    ("memory.forget", {"ids": [1, 2]}, True),
    ("memory.forget", {"ids": [True]}, False),
    ("goals.list", {"status": "done"}, True),
    ("goals.list", {"status": "finished"}, False),
    ("chat", {"message": "hi"}, True),
    ("chat", {"message": "hi", "max_tokens": True}, False),
    ("chat", {"message": "hi", "stream": "yes"}, False),
    ("chat", {"message": ""}, False),
    ("inference.generate", {"messages": [{"role": "user", "content": "x"}], "seed": 7}, True),
    ("inference.generate", {"messages": [{"role": "user", "content": "x"}], "seed": "7"}, False),
    ("inference.generate", {"messages": [{"role": "robot", "content": "x"}]}, False),
    ("lora.load_stack", {"name": "legal.patent"}, True),
    ("lora.load_stack", {"name": "Legal"}, False),
    ("screenshot", {"url": "https://example.com/", "viewport": {"width": 100, "height": 100}}, True),
    ("screenshot", {"url": "about:blank"}, True),
    ("screenshot", {"viewport": {"width": "100", "height": 100}}, False),
    ("screenshot", {"url": "file:///etc/passwd"}, False),
    ("screenshot", {"url": "javascript:alert(1)"}, False),
    ("browser_js", {"script": "1+1", "timeout_ms": 1000}, True),
    ("browser_js", {"script": "1+1", "timeout_ms": "1000"}, False),
    ("browser_js", {"script": "1+1", "await_promise": 0}, False),
    ("browser.navigate", {"url": "HTTP://EXAMPLE.COM"}, True),
    ("brain.query", {"sql": "select ?", "params": [{"$bytes": "AAAA"}, 1, 1.5, None, "s"]}, True),
    ("brain.query", {"sql": "select ?", "params": [True]}, False),
    ("brain.query", {"sql": "select 1", "row_limit": 1.5}, False),
]


def params_accept(method: str, text: str) -> bool:
    try:
        REGISTRY[method].params.model_validate(JSON.decode_data(text))
    except ValidationError:
        return False
    return True


def test_params_agree_with_the_params_models() -> None:
    """Params of several methods, lax cases included: Ajv and the pydantic models agree."""
    texts = [json.dumps(params) for _, params, _ in PARAMS]
    refs = [f"#/$defs/{method}.params" for method, _, _ in PARAMS]
    verdict = ajv_check(document(), [(r, json.loads(t)) for r, t in zip(refs, texts, strict=True)])
    disagreements = []
    for (method, params, valid), text, ajv in zip(PARAMS, texts, verdict["results"], strict=True):
        model = params_accept(method, text)
        if model != valid or ajv["valid"] != valid:
            disagreements.append(f"{method} {params}: expected {valid}, models {model}, ajv {ajv}")
    assert [] == disagreements
