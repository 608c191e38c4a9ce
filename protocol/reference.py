"""docs/methods.md, generated from the command registry.

    python -m protocol.reference > docs/methods.md     # or: personad schema --markdown

Every method in :data:`protocol.commands.REGISTRY` gets a section: who serves
it, its params and result members (type, constraints, default, description,
straight from the pydantic models), the errors it can answer with, the
notifications it streams, and an example request. tests/protocol/
test_reference.py fails when docs/methods.md is not what this prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

from pydantic import BaseModel

from .commands import REGISTRY, Command
from .commands.registry import VARIANTS
from .connection import PROTOCOL_VERSION
from .errors import ErrorCode
from .examples import EXAMPLES
from .schema import served_by

__all__ = ["GROUPS", "example", "render"]

REGENERATE = "python -m protocol.reference > docs/methods.md"

#: Sections of the reference: (title, method prefixes), in order. A method
#: that matches none goes to "Other methods", so a new one is never lost.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("The bus: handshake, discovery, events, rooms", ("hello", "bus.", "event", "room.")),
    ("Persona daemons", ("persona.",)),
    (
        "The brain: memories, skills, interactions, goals, emotions",
        ("memory.", "skills.", "interactions.", "goals.", "emotions.", "brain."),
    ),
    ("Chat and LoRA stacks (personas)", ("chat", "lora.")),
    ("The inference service (cap:inference)", ("inference.", "adapter.")),
    ("The Academy (cap:academy, Testing Droids, Protocol Sheriffs)", ("academy.",)),
    ("Browsers (cap:browser, and personas)", ("screenshot", "browser_js", "browser.")),
]


#: What the bus itself may answer instead of the server, by kind of server.
_ROUTED = (
    ErrorCode.FORBIDDEN,
    ErrorCode.TARGET_OFFLINE,
    ErrorCode.TIMEOUT,
    ErrorCode.CANCELLED,
    ErrorCode.OVERLOADED,
    ErrorCode.SHUTTING_DOWN,
)
_SERVED = (ErrorCode.METHOD_NOT_FOUND, ErrorCode.INVALID_PARAMS, ErrorCode.INTERNAL_ERROR)


def example(command: Command) -> dict[str, Any]:
    """An example request (or notification) for ``command``, as it goes on the wire."""
    message: dict[str, Any] = {"jsonrpc": "2.0"}
    if not command.notification:
        message["id"] = 1
    message["method"] = command.method
    params = EXAMPLES.get(command.method, {})
    if params:
        message["params"] = params
    if command.served_by == "persona":
        message["to"] = "persona:demo"
    elif command.served_by.startswith("cap:"):
        message["to"] = command.served_by
    if command.method.startswith("chat.") or command.method.startswith("inference.token"):
        message["meta"] = {"reply_to": 1}
    return message


def render() -> str:
    """The whole of docs/methods.md."""
    out: list[str] = [
        "# personad methods reference",
        "",
        "<!-- Generated from protocol/commands/ by `python -m protocol.reference`"
        " (or `personad schema --markdown`); do not edit by hand. -->",
        "",
        f"Every method of protocol {PROTOCOL_VERSION}, generated from the command registry "
        "(`protocol/commands/`). The envelope, routing, deadlines, ACL and error codes are "
        "explained in [protocol.md](protocol.md); the machine-readable form of everything "
        "here is `personad schema` (JSON Schema 2020-12: `$defs/<method>.params` and "
        "`$defs/<method>.result`).",
        "",
        "Conventions for every method:",
        "",
        "* params are an object; members not listed are refused (-32602 INVALID_PARAMS);",
        '* types are strict: `"5"` is not an integer, `1` is not a boolean, `true` is not an '
        "integer; an integer is accepted where a number is;",
        "* a member marked *optional* may be left out (its default applies); where its type "
        "includes `null`, null means the same as leaving it out;",
        '* *bytes* travel as msgpack `bin`, or as `{"$bytes": "<base64>"}` on the JSON subprotocol;',
        "* times are RFC 3339 strings on JSON (a msgpack peer may send them the same way); "
        "results give them in UTC.",
        "",
        "Errors every request can get: from the bus, "
        + _codes(_ROUTED)
        + " (see [deadlines](protocol.md#deadlines-every-request-is-answered-exactly-once)); "
        "from the server, "
        + _codes(_SERVED)
        + ". Requests to the bus itself can get FORBIDDEN and INVALID_PARAMS. Notifications are "
        "never answered. The errors listed under a method are the ones particular to it.",
        "",
        "## Index",
        "",
        "| method | kind | served by | summary |",
        "|---|---|---|---|",
    ]
    grouped = _grouped()
    for _, commands in grouped:
        for command in commands:
            kind = "notification" if command.notification else "request"
            out.append(
                f"| [`{command.method}`](#{_anchor(command.method)}) | {kind} | "
                f"{_who(command)} | {_cell(command.summary)} |"
            )
    types: dict[str, dict[str, Any]] = {}
    for title, commands in grouped:
        out += ["", f"## {title}"]
        for command in commands:
            out += _section(command, types)
    out += ["", "## Types", "", "Objects used in the params and results above."]
    done: set[str] = set()
    while len(done) < len(types):
        for name in sorted(set(types) - done):
            done.add(name)
            schema = types[name]
            out += ["", f"### {name}", ""]
            if schema.get("description"):
                out += [_text(schema["description"]), ""]
            out += _members(schema, types)
    return "\n".join(out) + "\n"


def _grouped() -> list[tuple[str, list[Command]]]:
    seen: set[str] = set()
    grouped: list[tuple[str, list[Command]]] = []
    for title, prefixes in GROUPS:
        members = sorted(
            (c for name, c in REGISTRY.items() if name not in seen and _matches(name, prefixes) is not None),
            key=lambda c: (_matches(c.method, prefixes), c.method),
        )
        seen.update(c.method for c in members)
        grouped.append((title, members))
    rest = [c for name, c in sorted(REGISTRY.items()) if name not in seen]
    if rest:
        grouped.append(("Other methods", rest))
    return grouped


def _matches(name: str, prefixes: tuple[str, ...]) -> int | None:
    """The position of the first prefix ``name`` falls under, or None."""
    for i, prefix in enumerate(prefixes):
        if name == prefix or (name.startswith(prefix) and prefix.endswith(".")):
            return i
        if name.startswith(prefix + "."):
            return i
    return None


def _section(command: Command, types: dict[str, dict[str, Any]]) -> list[str]:
    out = ["", f"### `{command.method}`", "", _text(command.summary), ""]
    kind = "Notification (no `id`, never answered)" if command.notification else "Request"
    out.append(f"* **Kind:** {kind}")
    out.append(f"* **Served by:** {served_by(command)}")
    if command.streams:
        streamed = [
            n for n in REGISTRY if n.endswith(".token") and n.split(".")[0] == command.method.split(".")[0]
        ]
        names = ", ".join(f"[`{n}`](#{_anchor(n)})" for n in streamed) or "progress notifications"
        out.append(
            f"* **Streams:** {names} notifications with `meta.reply_to` = this request's id, "
            "before the response (when `stream` is true)"
        )
    out += ["", "**Params**", ""]
    out += _members(
        _schema(command.params, "validation"), types, empty="none: send `{}` or leave `params` out"
    )
    if not command.notification:
        out += ["", "**Result**", ""]
        out += _members(_schema(command.result, "serialization"), types, result=True)
        for (method, _), variant in sorted(VARIANTS.items()):
            if method == command.method:
                out += ["", f"**Result when served by {_who(variant)}** — {_text(variant.summary)}", ""]
                out += _members(_schema(variant.result, "serialization"), types, result=True)
        errors = command.error_list()
        if errors:
            out += ["", "**Errors particular to it**", ""]
            out += [f"* `{int(code)}` {code.name}: {_text(when)}" for code, when in errors]
    out += ["", "**Example**", "", "```json", json.dumps(example(command), ensure_ascii=False), "```"]
    return out


def _schema(model: type[BaseModel], mode: str) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(mode=mode, ref_template="#/$defs/{model}")  # type: ignore[arg-type]
    return schema


def _members(
    schema: dict[str, Any], types: dict[str, dict[str, Any]], *, empty: str = "none", result: bool = False
) -> list[str]:
    """A table of an object's members. Results have every member, always: no "required" column."""
    for name, sub in schema.get("$defs", {}).items():
        types.setdefault(name, sub)
    props = schema.get("properties", {})
    if not props:
        return [f"*{empty}*"]
    if result:
        rows = ["| member | type | description |", "|---|---|---|"]
        for name, sub in props.items():
            rows.append(f"| `{name}` | {_cell(_type(sub))} | {_cell(_text(sub.get('description', '')))} |")
        return rows
    required = set(schema.get("required", []))
    rows = ["| member | type | required | description |", "|---|---|---|---|"]
    for name, sub in props.items():
        if name in required:
            need = "yes"
        elif "default" in sub:
            need = f"no, default `{_json(sub['default'])}`"
        else:
            need = "no"
        rows.append(
            f"| `{name}` | {_cell(_type(sub))} | {need} | {_cell(_text(sub.get('description', '')))} |"
        )
    return rows


def _type(schema: dict[str, Any]) -> str:
    """A JSON Schema fragment in words: the type with its constraints."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(branch) for branch in schema["anyOf"])
    if "const" in schema:
        return f"`{_json(schema['const'])}`"
    if "enum" in schema:
        return " or ".join(f"`{_json(v)}`" for v in schema["enum"])
    kind = schema.get("type")
    limits: list[str] = []
    if kind == "string":
        if schema.get("format") == "binary":
            return "bytes"
        word = {"date-time": "time (RFC 3339)"}.get(schema.get("format", ""), "string")
        if "pattern" in schema:
            limits.append(f"`{schema['pattern']}`")
        limits += _range(schema, "minLength", "maxLength", "characters")
        return word + (f" ({', '.join(limits)})" if limits else "")
    if kind in {"integer", "number"}:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        below = "<" if "exclusiveMaximum" in schema else "≤"
        above = ">" if "exclusiveMinimum" in schema else "≥"
        if low is not None and high is not None:
            limits.append(f"{_json(low)} {'<' if above == '>' else '≤'} x {below} {_json(high)}")
        elif low is not None:
            limits.append(f"{above} {_json(low)}")
        elif high is not None:
            limits.append(f"{below} {_json(high)}")
        return str(kind) + (f" ({', '.join(limits)})" if limits else "")
    if kind == "array":
        limits += _range(schema, "minItems", "maxItems", "items")
        inner = _type(schema.get("items", {}))
        return f"list of {inner}" + (f" ({', '.join(limits)})" if limits else "")
    if kind == "object":
        extra = schema.get("additionalProperties")
        return f"object of {_type(extra)}" if isinstance(extra, dict) and extra else "object"
    if kind in {"boolean", "null"}:
        return str(kind)
    return "any"


def _range(schema: dict[str, Any], low_key: str, high_key: str, unit: str) -> list[str]:
    low, high = schema.get(low_key), schema.get(high_key)
    if low is not None and high is not None:
        return [f"{low} to {high} {unit}"]
    if high is not None:
        return [f"at most {high} {unit}"]
    if low is not None:
        return [f"at least {low} {unit}"]
    return []


def _codes(codes: Iterable[IntEnum]) -> str:
    return ", ".join(f"{c.name} ({int(c)})" for c in codes)


def _who(command: Command) -> str:
    return {"bus": "bus", "persona": "persona", "client": "sent to clients"}.get(
        command.served_by, f"`{command.served_by}`"
    )


def _anchor(method: str) -> str:
    # GitHub's heading anchors: lowercase, punctuation but - and _ dropped.
    return "".join(ch for ch in method.lower() if ch.isalnum() or ch in "-_")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(text: str) -> str:
    """One line of Markdown: whitespace folded, ``<`` outside code spans escaped (not HTML)."""
    parts = " ".join(text.split()).split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
