"""Reading personas from JSONL files: ours, PersonaHub's, FinePersonas' and plain ``{"persona": ...}``.

The format is told per line (docs/hub_formats.md, "Importing"), so a file
that mixes them reads as well as one that does not:

* ours: an object with ``path`` and ``persona`` (a :class:`HubPersona`), kept as written;
* PersonaHub's synthesized files (``math.jsonl``, ``instruction.jsonl``, ...):
  ``"input persona"`` is the persona (``"synthesized text"`` and
  ``"description"`` are what it made, not who it is, and are dropped);
* FinePersonas: ``id`` (``<urn:uuid:...>``), ``persona`` and ``labels`` (a JSON
  *string* holding a list, as released; a real list is taken too);
* plain: ``{"persona": "..."}`` (PersonaHub's own ``persona.jsonl`` has this shape).

Imported personas get path ``import`` and source ``<file name>:<line>``. Ids
come from the file when it has usable ones (sanitised to
``HUB_PERSONA_ID_PATTERN``) and are ``imp-<line>`` otherwise; a repeat gets a
``-2``, ``-3``... suffix in file order, so two reads give the same ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from daemon.errors import PersonadError
from protocol.hub_persona import MAX_PERSONA_CHARS, Attributes, HubPersona

__all__ = ["MAX_LINE_BYTES", "PersonaImportError", "detect_format", "persona_from_obj", "read_personas"]

#: The longest line read: a persona is at most MAX_PERSONA_CHARS, this leaves room for the rest.
MAX_LINE_BYTES: Final = 64 * 1024
_ID_BAD = re.compile(r"[^A-Za-z0-9_.:-]+")
_MAX_ID = 128


class PersonaImportError(PersonadError):
    """Raised when a persona file cannot be read: the message names file, line and the fix."""


def detect_format(obj: dict[str, Any]) -> str:
    """Which format one decoded line is in: ``hub``, ``personahub``, ``finepersonas`` or ``plain``.

    Raises ``ValueError`` for an object none of them fits.
    """
    if "path" in obj and "persona" in obj:
        return "hub"
    if "input persona" in obj:
        return "personahub"
    if "persona" in obj and "labels" in obj:
        return "finepersonas"
    if "persona" in obj:
        return "plain"
    raise ValueError(
        'no persona text: expected "persona" (ours, FinePersonas, plain) or "input persona" (PersonaHub)'
    )


def _sanitise_id(raw: Any) -> str | None:
    """A usable id from the file's, or None: FinePersonas' ``<urn:uuid:x>`` becomes ``urn:uuid:x``."""
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        return None
    text = _ID_BAD.sub("-", str(raw).strip().strip("<>")).strip("-_.:")
    return text[:_MAX_ID] or None


def _labels(raw: Any) -> list[str]:
    """FinePersonas' labels: a JSON string of a list as released, or a list; at most 8, each 1..80 chars."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = [raw]  # a bare label string
    if not isinstance(raw, list):
        return []
    out: list[str] = []
    for item in raw:
        if isinstance(item, str) and item.strip() and item.strip()[:80] not in out:
            out.append(item.strip()[:80])
    return out[:8]


def persona_from_obj(obj: dict[str, Any], *, default_id: str, source: str) -> HubPersona:
    """One decoded line as a HubPersona (the id is ``default_id`` unless the line has a usable one).

    Raises ``ValueError`` (with a reason fit for an error message) when it cannot.
    """
    kind = detect_format(obj)
    if kind == "hub":
        return HubPersona.model_validate(obj)
    text = obj["input persona"] if kind == "personahub" else obj["persona"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the persona text is empty or not a string")
    text = text.strip()
    if len(text) > MAX_PERSONA_CHARS:
        raise ValueError(f"the persona text has {len(text)} characters, over the limit {MAX_PERSONA_CHARS}")
    interests = _labels(obj.get("labels")) if kind == "finepersonas" else []
    persona_id = (_sanitise_id(obj.get("id")) if kind in ("finepersonas", "plain") else None) or default_id
    name = obj.get("name") if isinstance(obj.get("name"), str) and obj.get("name") else None
    return HubPersona(
        id=persona_id,
        persona=text,
        name=name[:100] if name else None,
        path="import",
        source=source[:300],
        attributes=Attributes(interests=interests),
    )


def read_personas(path: Path) -> Iterator[HubPersona]:
    """The personas of a JSONL file, one per non-blank line, streamed.

    Raises :class:`PersonaImportError` naming ``file:line`` for a line that is not
    JSON, is over MAX_LINE_BYTES, or holds no persona text.
    """
    seen: dict[str, int] = {}
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise PersonaImportError(f"{path}: cannot be read ({exc.strerror}); check the path") from None
    with handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise PersonaImportError(
                    f"{where}: line longer than {MAX_LINE_BYTES} bytes; a persona line is one JSON object"
                )
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise PersonaImportError(
                    f"{where}: not UTF-8 ({exc.reason}); re-save the file as UTF-8"
                ) from None
            if not line.strip():
                continue  # a trailing newline or a blank separator
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PersonaImportError(
                    f"{where}: not JSON ({exc.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(obj, dict):
                raise PersonaImportError(
                    f"{where}: a JSON {type(obj).__name__}, not an object with a persona"
                )
            try:
                persona = persona_from_obj(obj, default_id=f"imp-{number}", source=f"{path.name}:{number}")
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(part) for part in first["loc"])
                raise PersonaImportError(f"{where}: not a valid persona: {loc}: {first['msg']}") from None
            except ValueError as exc:
                raise PersonaImportError(f"{where}: {exc}") from None
            count = seen.get(persona.id, 0) + 1
            seen[persona.id] = count
            if count > 1:  # a repeated id: suffix it, deterministically in file order
                suffix = f"-{count}"
                new_id = persona.id[: _MAX_ID - len(suffix)] + suffix
                while new_id in seen:
                    count += 1
                    suffix = f"-{count}"
                    new_id = persona.id[: _MAX_ID - len(suffix)] + suffix
                seen[new_id] = 1
                persona = persona.model_copy(update={"id": new_id})
            yield persona
