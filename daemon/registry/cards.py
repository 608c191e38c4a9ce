"""Character Cards V1, V2 and V3: parse, write, and map onto a persona.

One file (over 500 lines) because the card models and the persona mapping share one notion of
what the card said; the PNG layer, the one clean seam, is already in cards_png.py.

This module holds the card models, their JSON and the mapping; the models
and the mapping share one notion of "what the card said", which is what the
round-trip rules (docs/cards.md) are about, so they stay together. Embedding
a card in a PNG, a byte layer under the JSON, is cards_png.py.

The specs followed, cited by section below:

* Character Card V2, ``malfoyslastname/character-card-spec-v2`` spec_v2.md
  (and spec_v1.md for V1, README.md "Proposed fields" for how V1 and V2 are
  told apart);
* Character Card V3, ``kwaroran/character-card-spec-v3`` SPEC_V3.md.

Three promises, each tested in tests/daemon/registry/test_cards.py:

* Nothing a card says is dropped. The pydantic models allow extra members at
  every level (V2 "extensions": "MUST NOT destroy unknown key-value pairs";
  V3 "CharacterCard Object": "MAY save the fields that are not present in the
  specification so it can be exported safely"), and :func:`card_to_persona`
  returns a :class:`CardRemainder` holding every member with no home in the
  profile or the brain, so :func:`persona_to_card` rebuilds the same card.
* Hostile input is a :class:`~daemon.registry.errors.CardError` naming what is
  wrong, with limits as keyword-only arguments: file and chunk sizes, CRCs,
  base64, UTF-8, JSON depth and string length.
* Writing a card into a PNG (cards_png.py) replaces only the card chunks and
  keeps every other chunk byte-identical.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.commands.brain import MAX_CONTENT_BYTES, MAX_LABEL_CHARS, MemoryRememberParams
from protocol.profile import Communication, Profile, StackEntry, Traits

from .errors import CardError, CardTooLarge

__all__ = [
    "CARD_SOURCE",
    "V2",
    "V3",
    "Card",
    "CardLimits",
    "CardRemainder",
    "CardSpec",
    "MemoryDraft",
    "backfill_v2",
    "card_from_obj",
    "card_to_json",
    "card_to_obj",
    "card_to_persona",
    "convert_card",
    "parse_card_json",
    "persona_to_card",
]

V2: Final = "chara_card_v2"
V3: Final = "chara_card_v3"
CardSpec: TypeAlias = Literal["chara_card_v2", "chara_card_v3"]

#: A memory as ``memory.remember`` accepts it: the very params model, so a
#: draft is sent as ``draft.model_dump()`` and cannot drift from the method.
MemoryDraft: TypeAlias = MemoryRememberParams

#: ``source`` of the memories an import makes.
CARD_SOURCE: Final = "card"
#: Our namespace in ``extensions`` (V2 "extensions": applications SHOULD namespace keys).
EXT: Final = "personad"

#: V3 "Embedding Methods" / "PNG/APNG": the warning a V2 backfill SHOULD carry in creator_notes.
BACKFILL_WARNING: Final = (
    "This character card is Character Card V3, but it is loaded as a Character Card V2. "
    "Please use a Character Card V3 compatible application to use this character card properly."
)

V1_FIELDS: Final = ("name", "description", "personality", "scenario", "first_mes", "mes_example")


@dataclass(frozen=True, slots=True, kw_only=True)
class CardLimits:
    """Bounds on what a card may cost to read; every one is a clear CardTooLarge when passed."""

    #: The card's JSON, in bytes (V3 assets may be data URLs, hence generous).
    max_json_bytes: int = 8 * 1024 * 1024
    #: Any one string in the card, in characters.
    max_string_chars: int = 2 * 1024 * 1024
    #: Nesting of objects and arrays (extensions are free-form JSON).
    max_depth: int = 48
    #: A whole PNG file, in bytes.
    max_png_bytes: int = 64 * 1024 * 1024
    #: One PNG chunk's data, in bytes (the PNG spec allows 2**31 - 1).
    max_chunk_bytes: int = 16 * 1024 * 1024


DEFAULT_LIMITS: Final = CardLimits()

# -- the models ------------------------------------------------------------------

Number: TypeAlias = int | float


class _CardModel(BaseModel):
    """Strict types (a card's ``"1"`` stays a string), unknown members kept verbatim.

    Members the spec calls mandatory get their spec default when absent and are
    always written; optional ones are written only when the card had them, so a
    round trip neither adds ``null``s nor loses a member (V2 "New fields":
    optional properties "must never be destroyed if already in the data").
    """

    model_config = ConfigDict(extra="allow", strict=True)

    REQUIRED: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _mark_required(self) -> _CardModel:
        self.__pydantic_fields_set__.update(self.REQUIRED)
        return self


class Asset(_CardModel):
    """V3 "assets": type, uri, name, ext are all MUST."""

    type: str
    uri: str
    name: str
    ext: str


class LoreEntry(_CardModel):
    """V2 "character_book" / V3 "Lorebook Fields" ``entries``."""

    REQUIRED = frozenset({"keys", "content", "extensions", "enabled", "insertion_order"})

    keys: list[str] = []
    content: str = ""
    extensions: dict[str, Any] = {}
    enabled: bool = True
    insertion_order: Number = 0
    case_sensitive: bool | None = None
    use_regex: bool | None = None  # V3 Additions: required in V3, see Card
    constant: bool | None = None
    name: str | None = None
    priority: Number | None = None
    id: int | float | str | None = None
    comment: str | None = None
    selective: bool | None = None
    # V2 types it Array<string>, V3 "secondary_keys" prose says comma-separated strings: keep either.
    secondary_keys: list[str] | str | None = None
    position: str | None = None


class CharacterBook(_CardModel):
    """V2 ``CharacterBook`` / V3 ``Lorebook``."""

    REQUIRED = frozenset({"extensions", "entries"})

    name: str | None = None
    description: str | None = None
    scan_depth: Number | None = None
    token_budget: Number | None = None
    recursive_scanning: bool | None = None
    extensions: dict[str, Any] = {}
    entries: list[LoreEntry] = []


class CardData(_CardModel):
    """V2 ``data`` plus V3's "New fields in CCV3"; V1 fields default to "" (spec_v1 "Fields")."""

    REQUIRED = frozenset(
        {
            *V1_FIELDS,
            "creator_notes",
            "system_prompt",
            "post_history_instructions",
            "alternate_greetings",
            "tags",
            "creator",
            "character_version",
            "extensions",
        }
    )

    name: str = ""
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    creator_notes: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: list[str] = []
    character_book: CharacterBook | None = None
    tags: list[str] = []
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = {}
    # V3 "New fields in CCV3"
    assets: list[Asset] | None = None
    nickname: str | None = None
    creator_notes_multilingual: dict[str, str] | None = None
    source: list[str] | None = None
    group_only_greetings: list[str] = []  # MUST be present in V3; see Card
    creation_date: Number | None = None
    modification_date: Number | None = None


class Card(_CardModel):
    """A V2 or V3 card (a V1 card is upgraded to V2 on reading, see :func:`card_from_obj`)."""

    spec: CardSpec
    spec_version: str
    data: CardData

    @model_validator(mode="after")
    def _v3_required(self) -> Card:
        # V3 "group_only_greetings": "this field MUST be present"; V3 Lorebook
        # entries: use_regex is required. A V2 card has neither, and does not get them.
        if self.spec == V3:
            self.data.__pydantic_fields_set__.add("group_only_greetings")
            if self.data.character_book is not None:
                for entry in self.data.character_book.entries:
                    if entry.use_regex is None:
                        entry.use_regex = False
                    entry.__pydantic_fields_set__.add("use_regex")
        return self


# -- JSON ----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_shape(obj: Any, limits: CardLimits) -> None:
    """Depth and string length, walked without recursion (the input is hostile).

    Only containers go on the stack and a member's path is built only for a
    container or an error, so a card of a million small values is checked
    in a fraction of the time json.loads took to read it.
    """
    if isinstance(obj, str) and len(obj) > limits.max_string_chars:
        raise CardTooLarge(f"$: a string over the limit of {limits.max_string_chars} characters")
    if not isinstance(obj, dict | list):
        return
    stack: list[tuple[dict[str, Any] | list[Any], int, str]] = [(obj, 1, "$")]
    while stack:
        value, depth, where = stack.pop()
        if depth > limits.max_depth:
            raise CardTooLarge(f"{where}: JSON nested deeper than {limits.max_depth} levels")
        items: Iterable[tuple[Any, Any]] = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > limits.max_string_chars:
                raise CardTooLarge(f"{where}: a key over the limit of {limits.max_string_chars} characters")
            if isinstance(item, str):
                if len(item) > limits.max_string_chars:
                    path = f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]"
                    raise CardTooLarge(
                        f"{path}: a string of {len(item)} characters, over the limit of "
                        f"{limits.max_string_chars}"
                    )
            elif isinstance(item, dict | list):
                path = f"{where}.{key[:40]}" if isinstance(value, dict) else f"{where}[{key}]"
                stack.append((item, depth + 1, path))


def _loads(raw: bytes | str, limits: CardLimits, what: str) -> Any:
    size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
    if size > limits.max_json_bytes:
        raise CardTooLarge(f"{what} is {size} bytes, over the limit of {limits.max_json_bytes}")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CardError(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise CardTooLarge(f"{what}: JSON nested deeper than {limits.max_depth} levels") from None
    except ValueError as exc:
        raise CardError(f"{what} is not valid JSON: {exc}") from None
    _check_shape(obj, limits)
    return obj


def _pydantic_reason(exc: ValidationError, prefix: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{prefix}{where}: {first['msg']}{more}"


def card_from_obj(obj: Any) -> Card:
    """Validate a decoded card; V1 (no ``spec``) is upgraded to V2.

    V1 is told apart as the V2 README's "Proposed fields" says: "If
    ``chara.spec === undefined``", the card holds the six V1 fields at top
    level. It becomes a V2 card with those fields in ``data`` (spec_v2 "New
    fields": "All V1 fields follow the V1 spec, other than being nested inside
    the ``data`` property") and V2's defaults for the rest; any other top-level
    members a V1 writer added travel along as extra ``data`` members.
    """
    if not isinstance(obj, dict):
        raise CardError(f"a card is a JSON object, not {type(obj).__name__}")
    spec = obj.get("spec")
    if spec is None and "data" not in obj:
        if not any(name in obj for name in V1_FIELDS):
            raise CardError("not a character card: no spec and none of the V1 fields (name, description, …)")
        obj = {"spec": V2, "spec_version": "2.0", "data": dict(obj)}
    elif spec == "lorebook_v3":
        raise CardError("this is a lorebook (spec lorebook_v3), not a character card")
    elif spec not in (V2, V3):
        raise CardError(f"unsupported card spec {spec!r}: expected {V2!r} or {V3!r} (or a V1 card)")
    version = obj.get("spec_version")
    if not isinstance(version, str):
        raise CardError(f"spec_version must be a string, got {type(version).__name__}")
    # V2 README "spec_version": minor versions are non-breaking, so any 2.x reads.
    # V3 "spec_version": SHOULD NOT reject another value; newer ones are imported.
    major = "2" if obj.get("spec") == V2 else "3"
    try:
        float(version)
    except ValueError:
        raise CardError(f"spec_version {version[:20]!r} is not a version number") from None
    if version.split(".")[0] != major:
        raise CardError(f"spec_version {version[:20]!r} does not match spec {obj['spec']!r}")
    try:
        return Card.model_validate(obj)
    except ValidationError as exc:
        raise CardError(_pydantic_reason(exc, "invalid card: ")) from None


def parse_card_json(raw: bytes | str, *, limits: CardLimits = DEFAULT_LIMITS) -> Card:
    """A card from its JSON (a .json file, or the text of a PNG card chunk)."""
    return card_from_obj(_loads(raw, limits, "the card"))


def card_to_obj(card: Card) -> dict[str, Any]:
    """The card as JSON-ready objects: spec-mandatory members, and whatever else it had."""
    out: dict[str, Any] = card.model_dump(mode="json", exclude_unset=True)
    return out


def card_to_json(card: Card) -> bytes:
    """The card as UTF-8 JSON (non-ASCII kept as is, as the ecosystem writes it)."""
    return json.dumps(card_to_obj(card), ensure_ascii=False).encode("utf-8")


def convert_card(card: Card, spec: CardSpec) -> Card:
    """The same card under another spec, losing nothing.

    V3 -> V2 keeps the V3-only members as extra ``data`` members (a V2 reader
    ignores them, and they come back on the next import); V2 -> V3 gains V3's
    mandatory ``group_only_greetings`` and ``use_regex`` with their defaults.
    Decorators are kept verbatim: this is an export for V2, not a backfill.
    """
    if card.spec == spec:
        return card
    obj = card_to_obj(card)
    obj["spec"] = spec
    obj["spec_version"] = "2.0" if spec == V2 else "3.0"
    return card_from_obj(obj)


_DECORATOR_LINE = re.compile(r"^@@[^\n]*(?:\n|$)", re.MULTILINE)


def strip_decorators(content: str) -> str:
    """Content without its V3 "Decorators" lines (``@@name value``), and the newlines around them."""
    stripped = _DECORATOR_LINE.sub("", content)
    return stripped.strip("\n") if stripped != content else content


def backfill_v2(card: Card) -> Card:
    """The V2 card a V3 PNG also carries in its ``chara`` chunk.

    V3 "Embedding Methods" / "PNG/APNG": a backfill SHOULD warn in
    ``creator_notes``; V3 "Decorators": "On backfilling V2, the application
    SHOULD remove all decorators".
    """
    obj = card_to_obj(convert_card(card, V2))
    data = obj["data"]
    notes = data.get("creator_notes", "")
    data["creator_notes"] = f"{BACKFILL_WARNING}\n\n{notes}" if notes else BACKFILL_WARNING
    book = data.get("character_book")
    if isinstance(book, dict):
        for entry in book.get("entries", []):
            entry["content"] = strip_decorators(entry.get("content", ""))
    return card_from_obj(obj)


# -- mapping onto a persona -------------------------------------------------------

#: Which card member a card-made memory stands for, in its ``context["card"]``.
_FIELD_SCENARIO: Final = "scenario"
_FIELD_EXAMPLES: Final = "mes_example"
_FIELD_ENTRY: Final = "character_book.entries"
#: Room left in a memory's context for the entry's keys (the context is capped at 16 KiB).
_MAX_TAG_JSON: Final = 4096
_KIND_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")


class CardRemainder(BaseModel):
    """Everything of a card that has no home in the profile or the brain.

    ``card`` is the card's JSON with the members that moved out taken away:
    ``data.name``, ``description``, ``personality``, ``tags``, ``scenario``,
    ``mes_example``, our ``extensions.personad``, and the ``content`` of each
    lorebook entry that became a memory. ``originals`` holds the full value of
    a profile field the profile could not hold whole (too long, too many
    tags): exported unchanged when the profile still says what the import
    made of it, replaced when the profile was edited since.

    It holds a card's text (greetings, creator notes, …) and so is stored the
    way the profile is: encrypted, and erased with the persona.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    spec: CardSpec
    card: dict[str, Any]
    originals: dict[str, Any] = Field(default_factory=dict)


def _fit(text: str, limit: int, *, fallback: str = "") -> str:
    return text[:limit] if text else fallback


def _fit_tags(tags: Sequence[str]) -> list[str]:
    return [tag[:64] for tag in tags if tag][:32]


_PROFILE_LIMIT: Final = {"name": 100, "description": 4000, "personality": 2000}
_PERSONAD_PROFILE_KEYS: Final = ("role", "traits", "communication", "capabilities", "model", "stack")


def _import_profile_ext(ext: Any) -> dict[str, Any]:
    """What our own extension says about the profile (written by :func:`persona_to_card`)."""
    if not isinstance(ext, dict):
        raise CardError(f"data.extensions.{EXT} must be an object")
    out: dict[str, Any] = {}
    try:
        if "role" in ext:
            out["role"] = ext["role"]
        if "traits" in ext:
            out["traits"] = Traits.model_validate(ext["traits"])
        if "communication" in ext:
            out["communication"] = Communication.model_validate(ext["communication"])
        if "capabilities" in ext:
            out["capabilities"] = ext["capabilities"]
        if "model" in ext:
            out["model"] = ext["model"]
        if "stack" in ext:
            out["stack"] = [StackEntry.model_validate(item) for item in ext["stack"]]
    except (ValidationError, TypeError) as exc:
        reason = _pydantic_reason(exc, "") if isinstance(exc, ValidationError) else str(exc)
        raise CardError(f"data.extensions.{EXT} is invalid: {reason}") from None
    return out


def _memory_attrs(ext: Any) -> dict[str, Any]:
    """kind / relevance / source of an entry we wrote from a memory, where they are valid."""
    attrs: dict[str, Any] = {}
    if not isinstance(ext, dict):
        return attrs
    kind, relevance, source = ext.get("kind"), ext.get("relevance"), ext.get("source")
    if isinstance(kind, str) and _KIND_PATTERN.match(kind):
        attrs["kind"] = kind
    if isinstance(relevance, int | float) and not isinstance(relevance, bool) and 0 <= relevance <= 1:
        attrs["relevance"] = float(relevance)
    if isinstance(source, str) and len(source) <= MAX_LABEL_CHARS:
        attrs["source"] = source
    return attrs


def _fits_memory(text: str) -> bool:
    return bool(text.strip()) and len(text.encode("utf-8")) <= MAX_CONTENT_BYTES


def _tags_context(keys: Iterable[str]) -> list[str]:
    tags: list[str] = []
    size = 2
    for key in keys:
        size += len(json.dumps(key, ensure_ascii=False)) + 1
        if size > _MAX_TAG_JSON:
            break
        tags.append(key)
    return tags


def card_to_persona(
    card: Card, *, persona_id: str, role: str = "character"
) -> tuple[Profile, list[MemoryDraft], CardRemainder]:
    """Map a card onto a profile, memories for its brain, and the rest.

    The table of what goes where is in docs/cards.md. ``persona_id`` is the
    registry's choice (ids are never derived silently from a stranger's
    name); ``role`` is used unless the card carries our own extension.
    """
    obj = card_to_obj(card)
    data: dict[str, Any] = obj["data"]
    originals: dict[str, Any] = {}

    fields: dict[str, Any] = {"id": persona_id, "role": role}
    name = data.pop("name")
    fields["name"] = _fit(name, _PROFILE_LIMIT["name"], fallback="Unnamed character")
    description = data.pop("description")
    fields["description"] = _fit(description, _PROFILE_LIMIT["description"])
    personality = data.pop("personality")
    notes = _fit(personality, _PROFILE_LIMIT["personality"])
    tags = data.pop("tags")
    fields["tags"] = _fit_tags(tags)
    for key, original, derived in (
        ("name", name, fields["name"]),
        ("description", description, fields["description"]),
        ("personality", personality, notes),
        ("tags", tags, fields["tags"]),
    ):
        if original != derived:
            originals[key] = original

    extensions = data["extensions"]
    ours = extensions.pop(EXT, None)
    if ours is not None:
        fields.update(_import_profile_ext(ours))
        rest = {k: v for k, v in ours.items() if k not in _PERSONAD_PROFILE_KEYS}
        if rest:  # a newer personad's members we do not know: kept for the next export
            extensions[EXT] = rest
    communication = fields.pop("communication", Communication())
    fields["communication"] = communication.model_copy(update={"notes": notes})
    try:
        profile = Profile.model_validate(fields)
    except ValidationError as exc:
        raise CardError(_pydantic_reason(exc, "the card does not make a valid profile: ")) from None

    memories: list[MemoryDraft] = []

    def remember(content: str, field: str, **extra: Any) -> None:
        context: dict[str, Any] = {"card": {"field": field}}
        index = extra.pop("index", None)
        if index is not None:
            context["card"]["index"] = index
        tags = extra.pop("tags", None)
        if tags:
            context["tags"] = tags
        memories.append(MemoryDraft(content=content, context=context, **{"source": CARD_SOURCE, **extra}))

    # spec_v1 "scenario": "SHOULD be included by default in every prompt", hence pinned.
    if _fits_memory(data["scenario"]):
        remember(data.pop("scenario"), _FIELD_SCENARIO, kind="scenario", pinned=True, relevance=1.0)
    if _fits_memory(data["mes_example"]):
        remember(data.pop("mes_example"), _FIELD_EXAMPLES, kind="example")
    book = data.get("character_book")
    if isinstance(book, dict):
        for index, entry in enumerate(book["entries"]):
            content = entry["content"]
            # V3 "enabled": false "MUST NOT be considered as a match IN ANY CASE": not a memory.
            if not entry["enabled"] or not _fits_memory(content):
                continue
            label = entry.get("name") or entry.get("comment") or next(iter(entry["keys"]), "")
            attrs = {"kind": "lore", **_memory_attrs(entry["extensions"].get(EXT))}
            remember(
                content,
                _FIELD_ENTRY,
                index=index,
                tags=_tags_context(entry["keys"]),
                subject=label[:MAX_LABEL_CHARS] if isinstance(label, str) and label else None,
                pinned=bool(entry.get("constant")),
                **attrs,
            )
            del entry["content"]
    return profile, memories, CardRemainder(spec=card.spec, card=obj, originals=originals)


def _restore(field: str, current: Any, originals: Mapping[str, Any], derive: Any) -> Any:
    """The original value if the profile still holds what the import made of it, else the profile's."""
    if field in originals and derive(originals[field]) == current:
        return originals[field]
    return current


def _card_link(memory: MemoryDraft) -> tuple[str, int | None] | None:
    link = (memory.context or {}).get("card")
    if not isinstance(link, dict) or not isinstance(link.get("field"), str):
        return None
    index = link.get("index")
    return link["field"], index if isinstance(index, int) and not isinstance(index, bool) else None


def persona_to_card(
    profile: Profile,
    memories: Iterable[MemoryDraft],
    remainder: CardRemainder | None = None,
    *,
    spec: CardSpec = V3,
    now: float | None = None,
) -> Card:
    """Rebuild a card from a persona: the inverse of :func:`card_to_persona`.

    ``memories`` are what the caller chooses to export (the registry passes
    the persona's memories with source ``card`` and whichever others the
    operator asked for). A memory made from a card member goes back to that
    member; a lorebook entry whose memory is gone (forgotten) is left out; any
    other memory becomes a new lorebook entry keyed by its subject and tags.
    ``now`` (Unix time) sets V3's ``modification_date`` ("SHOULD add or
    modify this field when the character card is exported"); None leaves it.
    """
    if remainder is None:
        obj: dict[str, Any] = {"spec": spec, "spec_version": "2.0" if spec == V2 else "3.0", "data": {}}
        if spec == V3 and profile.lineage.created_at > 0:
            obj["data"]["creation_date"] = int(profile.lineage.created_at)
        originals: Mapping[str, Any] = {}
    else:
        try:  # it comes from storage: a damaged one is an error, not a KeyError halfway through
            card_from_obj(copy.deepcopy(remainder.card))
        except CardError as exc:
            raise CardError(f"the stored card remainder is unusable: {exc}") from None
        obj = copy.deepcopy(remainder.card)
        originals = remainder.originals
        if remainder.spec != spec:
            obj["spec"] = spec
            obj["spec_version"] = "2.0" if spec == V2 else "3.0"
    data: dict[str, Any] = obj["data"]
    data["name"] = _restore(
        "name", profile.name, originals, lambda v: _fit(v, 100, fallback="Unnamed character")
    )
    data["description"] = _restore("description", profile.description, originals, lambda v: _fit(v, 4000))
    data["personality"] = _restore(
        "personality", profile.communication.notes, originals, lambda v: _fit(v, 2000)
    )
    data["tags"] = _restore("tags", list(profile.tags), originals, _fit_tags)
    extensions = data.setdefault("extensions", {})
    ours = profile.model_dump(mode="json", include=set(_PERSONAD_PROFILE_KEYS))
    ours["communication"].pop("notes")  # it is the card's personality
    previous = extensions.get(EXT)
    extensions[EXT] = {**(previous if isinstance(previous, dict) else {}), **ours}

    data.setdefault("scenario", "")
    data.setdefault("mes_example", "")
    book = data.get("character_book")
    entries: list[dict[str, Any]] = book["entries"] if isinstance(book, dict) else []
    linked: dict[int, MemoryDraft] = {}
    loose: list[MemoryDraft] = []
    # scenario and mes_example went to memories only when the remainder lacks them
    moved = set() if remainder is None else {"scenario", "mes_example"} - set(remainder.card["data"])
    for memory in memories:
        link = _card_link(memory)
        field, index = link if link is not None else (None, None)
        if field in (_FIELD_SCENARIO, _FIELD_EXAMPLES) and field in moved:
            data[field] = memory.content
            moved.discard(field)  # a second memory claiming it is exported as lore
        elif (
            field == _FIELD_ENTRY
            and index is not None
            and 0 <= index < len(entries)
            and "content" not in entries[index]
            and index not in linked
        ):
            linked[index] = memory
        else:
            loose.append(memory)
    kept: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        if "content" not in entry:
            if index not in linked:
                continue  # its memory was forgotten: so is the entry
            memory = linked[index]
            entry["content"] = memory.content
            if isinstance(entry.get("extensions", {}).get(EXT), dict):
                entry["extensions"][EXT].update(
                    kind=memory.kind, relevance=memory.relevance, source=memory.source
                )
        kept.append(entry)
    if loose:
        if not isinstance(book, dict):
            book = data["character_book"] = {"extensions": {}, "entries": []}
        order = max((e.get("insertion_order", 0) for e in kept), default=0)
        for memory in loose:
            order += 1
            tags = (memory.context or {}).get("tags")
            keys = ([memory.subject] if memory.subject else []) + (
                [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
            )
            kept.append(
                {
                    "keys": keys,
                    "content": memory.content,
                    "extensions": {
                        EXT: {"kind": memory.kind, "relevance": memory.relevance, "source": memory.source}
                    },
                    "enabled": True,
                    "insertion_order": order,
                    "constant": memory.pinned,
                }
            )
    if isinstance(book, dict):
        book["entries"] = kept
    if spec == V3 and now is not None:
        data["modification_date"] = int(now)
    # SillyTavern also writes V1 copies of these at top level; keep them true.
    for name in V1_FIELDS:
        if name in obj:
            obj[name] = data[name]
    return card_from_obj(obj)
