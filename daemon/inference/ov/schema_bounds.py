"""String length bounds that the OpenVINO engine checks on the reply instead of in its grammar.

OpenVINO GenAI's bundled xgrammar matched a schema with a bounded string
(``maxLength``) 12 to 21 times slower per token than the same schema without
the bound (PersonaHub's structured schema, a 300-character persona, SmolLM2 on
one thread: bench/inference.py section 10). So the engine compiles the schema
without ``maxLength`` (``without_max_length``) and holds the finished reply to
it (``string_too_long``): an unstreamed reply that breaks it is decoded again
with the bound in the grammar; a streamed one, already sent, is refused
(``ReplyInvalid``), as a reply that is not strict JSON is. A reply cut at
``max_tokens`` is returned as cut, not checked. The torch engine's grammar
keeps the bound.

Both walk a schema by its structure (the keywords that hold subschemas), so a
property that happens to be *named* ``maxLength`` is left alone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["string_too_long", "without_max_length"]

#: Keywords whose value is one subschema, a list of them, or a name -> subschema map.
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "unevaluatedItems")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "$defs", "definitions")


def without_max_length(schema: Any) -> Any:
    """``schema`` with every ``maxLength`` keyword removed (a new object; the input is not changed)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "maxLength":
            continue
        if key in _ONE:
            out[key] = without_max_length(value)
        elif key in _MANY and isinstance(value, list):
            out[key] = [without_max_length(v) for v in value]
        elif key in _NAMED and isinstance(value, dict):
            out[key] = {name: without_max_length(v) for name, v in value.items()}
        else:
            out[key] = value
    return out


def string_too_long(schema: Any, value: Any, *, root: Any = None, path: str = "") -> str | None:
    """Where ``value`` has a string longer than ``schema``'s ``maxLength`` allows there, in words;
    None when every string is within its bound. Only the bounds are checked: the grammar has
    held the reply to the rest of the schema already."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if (by_ref := string_too_long(target, value, root=root, path=path)) is not None:
            return by_ref
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            # Only the branches whose type the value has could have taken it.
            found = [string_too_long(b, value, root=root, path=path) for b in branches if _fits(b, value)]
            if found and all(f is not None for f in found):  # none of them takes it
                return found[0]
    for branch in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
        if (found_one := string_too_long(branch, value, root=root, path=path)) is not None:
            return found_one
    limit = schema.get("maxLength")
    if isinstance(value, str) and isinstance(limit, int) and len(value) > limit:
        return f"{path or 'the reply'} is {len(value)} characters long, and the schema allows at most {limit}"
    if isinstance(value, dict):
        properties: dict[str, Any] = (
            schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        )
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = properties.get(name, extra if isinstance(extra, dict) else None)
            if (
                found_one := string_too_long(sub, item, root=root, path=f"{path}.{name}".lstrip("."))
            ) is not None:
                return found_one
    if isinstance(value, list):
        prefix: list[Any] = schema["prefixItems"] if isinstance(schema.get("prefixItems"), list) else []
        items = schema.get("items")
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else items
            if (found_one := string_too_long(sub, item, root=root, path=f"{path}[{index}]")) is not None:
                return found_one
    return None


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def _fits(schema: Any, value: Any) -> bool:
    """Whether ``value``'s JSON type is one ``schema`` allows (a schema without a type allows any)."""
    if not isinstance(schema, dict) or "type" not in schema:
        return True
    names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if isinstance(value, bool):  # a bool is an int in Python, not in JSON
        return "boolean" in names
    return any(isinstance(value, _TYPES.get(name, ())) for name in names)
