"""The string length bounds the OpenVINO engine takes out of its grammar and checks on the reply."""

from __future__ import annotations

from daemon.hub.generator import STRUCTURED_SCHEMA
from daemon.inference.ov.schema_bounds import string_too_long, without_max_length

NESTED = {
    "type": "object",
    "properties": {
        "maxLength": {"type": "string", "maxLength": 3},  # a property that is *named* maxLength
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}},
        "pair": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 1}, {"type": "integer"}]},
        "either": {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer"}]},
        "ref": {"$ref": "#/$defs/short"},
    },
    "$defs": {"short": {"type": "string", "maxLength": 2}},
}


def test_every_max_length_keyword_goes_and_nothing_else() -> None:
    relaxed = without_max_length(NESTED)
    assert "maxLength" in relaxed["properties"]  # the property stays
    assert {"type": "string"} == relaxed["properties"]["maxLength"]
    assert {"type": "string"} == relaxed["properties"]["tags"]["items"]
    assert [{"type": "string"}, {"type": "integer"}] == relaxed["properties"]["pair"]["prefixItems"]
    assert {"type": "string"} == relaxed["$defs"]["short"]
    assert "maxLength" in NESTED["$defs"]["short"]  # the caller's schema is not changed
    persona = without_max_length(STRUCTURED_SCHEMA)["properties"]["persona"]
    assert {"type": "string", "minLength": 20} == persona


def test_a_string_past_its_bound_is_named_with_its_path() -> None:
    fine = {"maxLength": "abc", "tags": ["abcd"], "pair": ["a", 1], "either": 12345, "ref": "ab"}
    assert string_too_long(NESTED, fine) is None
    cases = {
        "maxLength": ("abcd", "maxLength is 4 characters long, and the schema allows at most 3"),
        "tags": (["ok", "abcde"], "tags[1] is 5 characters long, and the schema allows at most 4"),
        "pair": (["ab", 1], "pair[0] is 2 characters long, and the schema allows at most 1"),
        "either": ("abc", "either is 3 characters long, and the schema allows at most 2"),
        "ref": ("abc", "ref is 3 characters long, and the schema allows at most 2"),
    }
    for name, (value, said) in cases.items():
        assert said == string_too_long(NESTED, {**fine, name: value}), name
    # Characters, as the schema counts them, not bytes.
    assert string_too_long({"type": "string", "maxLength": 3}, "éé€") is None
    assert "the reply is 301 characters" in str(
        string_too_long({"type": "string", "maxLength": 300}, "x" * 301)
    )
