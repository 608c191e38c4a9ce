"""Character Cards V1/V2/V3: parsing, PNG embedding, the persona mapping, and hostile input.

The fixtures in cards/ are written by hand from the public specs (see its
README). "Round trip" here always compares parsed JSON: import, export and
re-import must lose no member the card had. Over 500 lines because it is one
test per spec clause and per kind of hostile input, sharing the helpers above.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from daemon.brain import Brain
from daemon.registry.cards import (
    BACKFILL_WARNING,
    CARD_SOURCE,
    EXT,
    V2,
    V3,
    Card,
    CardLimits,
    MemoryDraft,
    card_from_obj,
    card_to_json,
    card_to_obj,
    card_to_persona,
    convert_card,
    parse_card_json,
    persona_to_card,
)
from daemon.registry.cards_png import minimal_png, read_png_card, read_png_chunks, write_png_card
from daemon.registry.errors import CardError, CardPngError, CardTooLarge, RegistryError
from protocol.profile import Communication, Profile, Traits

CARDS = Path(__file__).parent / "cards"


def fixture_bytes(name: str) -> bytes:
    return (CARDS / name).read_bytes()


def without_ours(obj: dict[str, Any]) -> dict[str, Any]:
    """The card minus the ``extensions.personad`` an export adds (our namespace, spec-sanctioned)."""
    out = copy.deepcopy(obj)
    out["data"]["extensions"].pop(EXT, None)
    return out


def round_trip(card: Card, spec: str | None = None) -> Card:
    profile, memories, remainder = card_to_persona(card, persona_id="p1")
    return persona_to_card(profile, memories, remainder, spec=spec or card.spec)  # type: ignore[arg-type]


def chunk(ctype: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    crc = zlib.crc32(ctype + data) if crc is None else crc
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def png_with(*chunks: bytes) -> bytes:
    """minimal_png with extra chunks before IEND."""
    base = minimal_png()
    return base[:-12] + b"".join(chunks) + base[-12:]


def text_chunk(keyword: bytes, payload: bytes) -> bytes:
    return chunk(b"tEXt", keyword + b"\0" + payload)


# -- the fixtures read as the specs say ---------------------------------------------


def test_v2_fixture_reads_every_member() -> None:
    """Every V2 member of the hand-written card is read, typed, and written back as it was."""
    raw = json.loads(fixture_bytes("v2_card.json"))
    card = parse_card_json(fixture_bytes("v2_card.json"))
    assert V2 == card.spec
    assert "Haruhi" == card.data.name
    assert card.data.character_book is not None
    entry = card.data.character_book.entries[0]
    assert (["Kyon", "kyon"], 1, "before_char", ["brigade", "club"]) == (
        entry.keys,
        entry.id,
        entry.position,
        entry.secondary_keys,
    )
    assert raw == card_to_obj(card)


def test_v3_fixture_reads_every_member() -> None:
    """The V3 additions (assets, nickname, multilingual notes, source, dates) are read."""
    raw = json.loads(fixture_bytes("v3_card.json"))
    card = parse_card_json(fixture_bytes("v3_card.json"))
    assert V3 == card.spec
    assert "Sera" == card.data.nickname
    assert card.data.assets is not None
    assert "ccdefault:" == card.data.assets[0].uri
    assert ["*Sera counts the visitors.* More of you than usual."] == card.data.group_only_greetings
    assert 1714000000 == card.data.creation_date
    assert raw == card_to_obj(card)


def test_png_fixture_holds_the_v3_card_and_its_backfill() -> None:
    """ccv3 wins over the chara backfill (V3 "PNG/APNG"); the backfill is a V2 card with the warning."""
    png = fixture_bytes("v3_card.png")
    card = read_png_card(png)
    assert json.loads(fixture_bytes("v3_card.json")) == card_to_obj(card)
    chunks, trailer = read_png_chunks(png)
    assert b"" == trailer
    chara = next(c for c in chunks if c.keyword() == "chara")
    backfill = parse_card_json(base64.b64decode(chara.data[len(b"chara\0") :]))
    assert V2 == backfill.spec
    assert backfill.data.creator_notes.startswith(BACKFILL_WARNING)


# -- round trips -----------------------------------------------------------------------


def test_v2_json_import_export_reimport_loses_nothing() -> None:
    """Acceptance: the hand-written V2 card goes through a persona and comes back whole."""
    original = card_to_obj(parse_card_json(fixture_bytes("v2_card.json")))
    exported = round_trip(parse_card_json(fixture_bytes("v2_card.json")))
    assert original == without_ours(card_to_obj(exported))
    again = round_trip(parse_card_json(card_to_json(exported)))
    assert card_to_obj(exported) == card_to_obj(again)


def test_v3_png_import_export_reimport_loses_nothing_and_keeps_other_chunks() -> None:
    """Acceptance: the V3 PNG imports, exports into the same image and re-imports whole;
    every non-card chunk stays byte-identical and in order."""
    png = fixture_bytes("v3_card.png")
    original = card_to_obj(read_png_card(png))
    exported_png = write_png_card(png, round_trip(read_png_card(png)))
    assert original == without_ours(card_to_obj(read_png_card(exported_png)))
    again_png = write_png_card(exported_png, round_trip(read_png_card(exported_png)))
    assert card_to_obj(read_png_card(exported_png)) == card_to_obj(read_png_card(again_png))

    def others(data: bytes) -> list[bytes]:
        return [c.raw for c in read_png_chunks(data)[0] if c.keyword() not in ("chara", "ccv3")]

    assert others(png) == others(exported_png) == others(again_png)
    keywords = [c.keyword() for c in read_png_chunks(exported_png)[0] if c.keyword()]
    assert ["Software", "ccv3", "chara"] == keywords


def test_unknown_members_and_extensions_survive() -> None:
    """Unknown top-level, data, lorebook and entry members and nested extensions round-trip exactly."""
    obj = json.loads(fixture_bytes("v2_card.json"))
    obj["x_top"] = {"a": [1, 2.5, None, True]}
    obj["data"]["x_data"] = "kept"
    obj["data"]["extensions"]["deep"] = {"a": {"b": {"c": [{"d": "e"}]}}}
    obj["data"]["character_book"]["x_book"] = 7
    obj["data"]["character_book"]["entries"][0]["x_entry"] = {"k": "v"}
    obj["data"]["character_book"]["entries"][0]["extensions"]["ns/deep"] = {"z": [[]]}
    card = card_from_obj(copy.deepcopy(obj))
    assert obj == card_to_obj(card)
    assert obj == without_ours(card_to_obj(round_trip(card)))
    png_card = read_png_card(write_png_card(minimal_png(), round_trip(card)))
    assert obj == without_ours(card_to_obj(png_card))


def test_v3_to_v2_and_back_loses_nothing() -> None:
    """A V3 card exported as V2 keeps its V3 members as extra data and gets them back."""
    v3 = parse_card_json(fixture_bytes("v3_card.json"))
    as_v2 = round_trip(v3, V2)
    assert V2 == as_v2.spec
    assert "Sera" == card_to_obj(as_v2)["data"]["nickname"]
    back = round_trip(parse_card_json(card_to_json(as_v2)), V3)
    assert card_to_obj(v3) == without_ours(card_to_obj(back))
    assert card_to_obj(v3) == card_to_obj(convert_card(convert_card(v3, V2), V3))


def test_sillytavern_top_level_copies_follow_the_profile() -> None:
    """V1 mirrors at top level (as SillyTavern writes) are kept, and updated when the profile changes."""
    obj = json.loads(fixture_bytes("v2_card.json"))
    obj["name"] = obj["data"]["name"]
    obj["description"] = obj["data"]["description"]
    profile, memories, remainder = card_to_persona(card_from_obj(obj), persona_id="p1")
    renamed = profile.model_copy(update={"name": "Suzumiya"})
    card = card_to_obj(persona_to_card(renamed, memories, remainder, spec=V2))
    assert ("Suzumiya", "Suzumiya") == (card["name"], card["data"]["name"])
    assert obj["description"] == card["description"]


def test_modification_date_is_set_on_export_when_asked() -> None:
    """V3 "modification_date": SHOULD be set on export; creation_date is left alone."""
    card = parse_card_json(fixture_bytes("v3_card.json"))
    profile, memories, remainder = card_to_persona(card, persona_id="p1")
    out = persona_to_card(profile, memories, remainder, now=1800000000.7)
    assert (1714000000, 1800000000) == (out.data.creation_date, out.data.modification_date)


# -- the mapping -------------------------------------------------------------------------


def test_mapping_table() -> None:
    """Each member lands where docs/cards.md says; creator notes and prompts never become memories."""
    card = parse_card_json(fixture_bytes("v2_card.json"))
    profile, memories, remainder = card_to_persona(card, persona_id="haruhi", role="brigade chief")
    assert ("haruhi", "Haruhi", "brigade chief") == (profile.id, profile.name, profile.role)
    assert card.data.description == profile.description
    assert card.data.personality == profile.communication.notes
    assert ["anime", "female", "Comedy"] == profile.tags
    by_kind = {m.kind: m for m in memories}
    assert card.data.scenario == by_kind["scenario"].content
    assert by_kind["scenario"].pinned
    assert card.data.mes_example == by_kind["example"].content
    lore = [m for m in memories if m.kind == "lore"]
    # the third entry is disabled: it "MUST NOT be considered as a match IN ANY CASE", so no memory
    assert [("Kyon", False, ["Kyon", "kyon"]), ("room", True, ["room", "club room"])] == [
        (m.subject, m.pinned, (m.context or {})["tags"]) for m in lore
    ]
    assert all(CARD_SOURCE == m.source for m in memories)
    texts = " ".join(m.content for m in memories)
    for never in (card.data.creator_notes, card.data.system_prompt, card.data.post_history_instructions):
        assert never not in texts
    assert card.data.first_mes == remainder.card["data"]["first_mes"]
    assert (
        "Closed space appears when Haruhi is frustrated."
        == (remainder.card["data"]["character_book"]["entries"][2]["content"])
    )
    # every draft is a valid memory.remember params object
    for memory in memories:
        MemoryDraft.model_validate(memory.model_dump())


def test_decorators_are_kept_verbatim() -> None:
    """V3 "Decorators" in lorebook content reach the memory and the export untouched."""
    card = parse_card_json(fixture_bytes("v3_card.json"))
    _, memories, _ = card_to_persona(card, persona_id="p1")
    assert card.data.character_book is not None
    lamp = card.data.character_book.entries[0].content
    assert lamp.startswith("@@depth 5\n@@@instruct_depth 5")
    assert lamp in [m.content for m in memories]
    assert lamp == round_trip(card).data.character_book.entries[0].content  # type: ignore[union-attr]


def test_fields_too_long_for_the_profile_come_back_whole_unless_edited() -> None:
    """A description over the profile's 4000 and 40 tags are kept whole; an edit wins over them."""
    obj = json.loads(fixture_bytes("v2_card.json"))
    obj["data"]["description"] = "d" * 9000
    obj["data"]["tags"] = [f"tag{i}" for i in range(40)] + ["t" * 100]
    obj["data"]["name"] = ""
    profile, memories, remainder = card_to_persona(card_from_obj(obj), persona_id="p1")
    assert (4000, 32, "Unnamed character") == (len(profile.description), len(profile.tags), profile.name)
    out = card_to_obj(persona_to_card(profile, memories, remainder, spec=V2))
    assert (obj["data"]["description"], obj["data"]["tags"], "") == (
        out["data"]["description"],
        out["data"]["tags"],
        out["data"]["name"],
    )
    edited = profile.model_copy(update={"description": "short now", "tags": ["one"]})
    out = card_to_obj(persona_to_card(edited, memories, remainder, spec=V2))
    assert ("short now", ["one"]) == (out["data"]["description"], out["data"]["tags"])


def test_forgotten_and_edited_memories_reach_the_export() -> None:
    """A forgotten lore memory drops its entry (its text is not in the remainder); an edit is exported."""
    card = parse_card_json(fixture_bytes("v2_card.json"))
    profile, memories, remainder = card_to_persona(card, persona_id="p1")
    kyon = next(m for m in memories if m.subject == "Kyon")
    assert kyon.content not in json.dumps(remainder.model_dump())
    kept = [m for m in memories if m is not kyon and m.kind != "scenario"]
    kept = [m.model_copy(update={"content": "edited"}) if m.kind == "example" else m for m in kept]
    out = persona_to_card(profile, kept, remainder, spec=V2)
    assert out.data.character_book is not None
    assert ["room", "closed space"] == [e.keys[0] for e in out.data.character_book.entries]
    assert ("", "edited") == (out.data.scenario, out.data.mes_example)


def test_a_persona_becomes_a_card_and_comes_back() -> None:
    """A persona never imported: its profile travels in our extension, its memories as lore entries."""
    profile = Profile(
        id="ada",
        name="Ada",
        role="analyst",
        description="Careful with numbers.",
        traits=Traits(precision=90, humor=20),
        tags=["math"],
        communication=Communication(style="formal", detail_level="detailed", notes="cites sources"),
        capabilities=["chat", "browse"],
        model="smollm2",
    )
    memories = [
        MemoryDraft(
            content="Ada prefers SI units.",
            subject="units",
            kind="preference",
            relevance=0.9,
            source="chat",
            context={"tags": ["si"]},
        ),
        MemoryDraft(content="The user is called Bo.", pinned=True, kind="fact"),
    ]
    for spec in (V2, V3):
        card = parse_card_json(card_to_json(persona_to_card(profile, memories, spec=spec)))
        back, drafts, _ = card_to_persona(card, persona_id="ada2", role="ignored")
        assert profile.model_dump(exclude={"id"}) == back.model_dump(exclude={"id"})
        assert [
            ("Ada prefers SI units.", "units", "preference", 0.9, "chat", False),
            ("The user is called Bo.", None, "fact", 0.5, "", True),
        ] == [(d.content, d.subject, d.kind, d.relevance, d.source, d.pinned) for d in drafts]


def test_v1_card_is_upgraded_to_v2() -> None:
    """spec_v2 / README "Proposed fields": no ``spec`` means V1; its fields move into ``data``."""
    v1 = {
        "name": "Old",
        "description": "d",
        "personality": "p",
        "scenario": "s",
        "first_mes": "f",
        "mes_example": "m",
        "avatar": "none",
        "talkativeness": "0.5",
    }
    card = parse_card_json(json.dumps(v1))
    assert (V2, "2.0", "Old", "f", "none") == (
        card.spec,
        card.spec_version,
        card.data.name,
        card.data.first_mes,
        card_to_obj(card)["data"]["avatar"],
    )
    assert card_to_obj(card) == without_ours(card_to_obj(round_trip(card)))


async def test_memories_round_trip_through_a_real_brain(tmp_path: Path) -> None:
    """Drafts are accepted by a real SQLCipher brain as they are, and recalled ones rebuild the card."""
    card = parse_card_json(fixture_bytes("v3_card.json"))
    profile, memories, remainder = card_to_persona(card, persona_id="p1")
    folder = tmp_path / "personas" / "p1"
    folder.mkdir(parents=True, mode=0o700)
    async with await Brain.open(folder / "brain.sqlite", os.urandom(32)) as brain:
        for memory in memories:
            await brain.remember(**memory.model_dump(exclude={"idempotency_key"}))
        await brain.remember("said in a chat, not from the card", source="chat")
        hits = await brain.recall("", source=CARD_SOURCE, limit=100)
    recalled = [
        MemoryDraft(
            content=h.content,
            context=h.context,
            relevance=h.relevance,
            source=h.source,
            subject=h.subject,
            pinned=h.pinned,
            kind=h.kind,
        )
        for h in hits
    ]
    assert len(memories) == len(recalled)
    assert card_to_obj(card) == without_ours(card_to_obj(persona_to_card(profile, recalled, remainder)))


# -- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error", "words"),
    [
        (b"not json", CardError, "not valid JSON"),
        (b'{"name": NaN}', CardError, "NaN is not JSON"),
        (b"\xff\xfe{}", CardError, "not UTF-8"),
        (b"[1, 2]", CardError, "JSON object, not list"),
        (b'{"spec": "chara_card_v4", "spec_version": "4.0", "data": {}}', CardError, "unsupported card spec"),
        (b'{"spec": "lorebook_v3", "data": {"entries": []}}', CardError, "lorebook"),
        (b'{"spec": "chara_card_v3", "spec_version": "2.0", "data": {}}', CardError, "does not match"),
        (b'{"spec": "chara_card_v2", "spec_version": 2, "data": {}}', CardError, "must be a string"),
        (b'{"spec": "chara_card_v2", "spec_version": "x", "data": {}}', CardError, "not a version"),
        (b'{"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": 5}}', CardError, "data.name"),
        (b'{"spec": "chara_card_v2", "spec_version": "2.0", "data": {"tags": "a"}}', CardError, "data.tags"),
        (
            b'{"spec": "chara_card_v3", "spec_version": "3.0", "data": {"assets": [{"type": "icon"}]}}',
            CardError,
            "data.assets.0.uri",
        ),
        (
            b'{"spec": "chara_card_v2", "spec_version": "2.0", "data": {"character_book": '
            b'{"entries": [{"enabled": "yes"}]}}}',
            CardError,
            "data.character_book.entries.0.enabled",
        ),
        (b'{"hello": 1}', CardError, "not a character card"),
        (b"[" * 100 + b"]" * 100, CardTooLarge, "nested deeper"),
        (b"[" * 200000 + b"]" * 200000, CardTooLarge, "nested deeper"),
    ],
)
def test_bad_json_is_a_clear_error(raw: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as caught:
        parse_card_json(raw)
    assert isinstance(caught.value, RegistryError)


def test_bad_extension_of_ours_is_a_clear_error() -> None:
    obj = json.loads(fixture_bytes("v2_card.json"))
    obj["data"]["extensions"][EXT] = {"traits": {"humor": 500}}
    with pytest.raises(CardError, match=r"extensions\.personad is invalid: humor"):
        card_to_persona(card_from_obj(obj), persona_id="p1")


def test_size_limits() -> None:
    """Huge strings and oversized files are refused before any mapping."""
    limits = CardLimits(max_string_chars=1000, max_json_bytes=50_000)
    obj = json.loads(fixture_bytes("v2_card.json"))
    obj["data"]["description"] = "x" * 1001
    with pytest.raises(CardTooLarge, match=r"\$.data.description: a string of 1001 characters"):
        parse_card_json(json.dumps(obj), limits=limits)
    obj["data"]["description"] = "x" * 60_000
    with pytest.raises(CardTooLarge, match="over the limit of 50000"):
        parse_card_json(json.dumps(obj), limits=limits)
    with pytest.raises(CardTooLarge, match="'chara' chunk holds over 50000 bytes"):
        read_png_card(write_png_card(minimal_png(), card_from_obj(obj)), limits=limits)
    with pytest.raises(CardTooLarge, match="JSON would be over the limit of 50000"):
        write_png_card(minimal_png(), card_from_obj(obj), limits=CardLimits(max_json_bytes=50_000))
    obj["data"]["description"] = "x" * 1001
    with pytest.raises(CardTooLarge, match="a string of 1001 characters"):
        write_png_card(minimal_png(), card_from_obj(obj), limits=limits)
    with pytest.raises(CardTooLarge, match="the PNG is"):
        read_png_card(fixture_bytes("v3_card.png"), limits=CardLimits(max_png_bytes=1000))
    with pytest.raises(CardTooLarge, match="chunk b'tEXt'"):
        read_png_card(fixture_bytes("v3_card.png"), limits=CardLimits(max_chunk_bytes=1000))


def _png_cases() -> list[tuple[str, bytes, type[Exception], str]]:
    good = fixture_bytes("v3_card.png")
    card_b64 = base64.b64encode(fixture_bytes("v2_card.json"))
    v2_in_ccv3 = text_chunk(b"ccv3", card_b64)
    bad_crc = bytearray(good)
    bad_crc[60] ^= 0x01  # a byte inside the IHDR/tIME area: its CRC no longer matches
    return [
        ("not a png", b"GIF89a....", CardPngError, "bad signature"),
        ("truncated", good[: len(good) // 2], CardPngError, "truncated"),
        ("no IEND", good[:-12], CardPngError, "truncated"),
        ("bad crc", bytes(bad_crc), CardPngError, "bad CRC"),
        ("tampered card", good.replace(b"ccv3\0eyJ", b"ccv3\0eyK"), CardPngError, "bad CRC"),
        ("huge length", good[:8] + struct.pack(">I", 2**32 - 1) + good[12:], CardPngError, "PNG maximum"),
        ("bad type", good[:8] + good[8:12] + b"IH1R" + good[16:], CardPngError, "invalid type"),
        (
            "no IHDR first",
            minimal_png()[:8] + chunk(b"tEXt", b"a\0b") + minimal_png()[8:],
            CardPngError,
            "not IHDR",
        ),
        ("no card", minimal_png(), CardPngError, "no character card"),
        ("bad base64", png_with(text_chunk(b"chara", b"!!!not base64")), CardPngError, "not valid base64"),
        (
            "base64 of garbage",
            png_with(text_chunk(b"chara", base64.b64encode(b"<html>"))),
            CardError,
            "not valid JSON",
        ),
        (
            "two chara",
            png_with(text_chunk(b"chara", card_b64), text_chunk(b"Chara", card_b64)),
            CardPngError,
            "more than one 'chara'",
        ),
        ("v2 in ccv3", png_with(v2_in_ccv3), CardPngError, "holds a chara_card_v2 card"),
        (
            "zTXt card",
            png_with(chunk(b"zTXt", b"chara\0\0" + zlib.compress(card_b64))),
            CardPngError,
            "cards are tEXt",
        ),
    ]


PNG_CASES = _png_cases()


@pytest.mark.parametrize(("png", "error", "words"), [c[1:] for c in PNG_CASES], ids=[c[0] for c in PNG_CASES])
def test_bad_png_is_a_clear_error(png: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        read_png_card(png)


def test_writing_refuses_a_bad_png() -> None:
    card = parse_card_json(fixture_bytes("v2_card.json"))
    with pytest.raises(CardPngError, match="bad signature"):
        write_png_card(b"\x00" * 64, card)


def test_writing_replaces_every_old_card_chunk() -> None:
    """A V2 card written over a V3 PNG removes ccv3 too, so no stale card is preferred by readers."""
    png = fixture_bytes("v3_card.png")
    v2 = parse_card_json(fixture_bytes("v2_card.json"))
    out = write_png_card(png, v2)
    keywords = [c.keyword() for c in read_png_chunks(out)[0] if c.keyword()]
    assert ["Software", "chara"] == keywords
    assert card_to_obj(v2) == card_to_obj(read_png_card(out))


def test_backfill_drops_decorators_and_warns() -> None:
    """V3 "Decorators": "On backfilling V2, the application SHOULD remove all decorators"."""
    card = parse_card_json(fixture_bytes("v3_card.json"))
    out = write_png_card(minimal_png(), card)
    chara = next(c for c in read_png_chunks(out)[0] if c.keyword() == "chara")
    backfill = parse_card_json(base64.b64decode(chara.data[len(b"chara\0") :]))
    assert backfill.data.character_book is not None
    assert [
        "The lamp has not gone out in three hundred years.",
        "The ghost ship passes on the first night of every month.",
    ] == [e.content for e in backfill.data.character_book.entries]
    assert f"{BACKFILL_WARNING}\n\nBest with long replies." == backfill.data.creator_notes


def test_v1_card_in_a_chara_chunk_and_bytes_after_iend() -> None:
    """V1's "Chara" chunk is read (upgraded to V2); bytes after IEND survive a write untouched."""
    v1 = {
        "name": "Old",
        "description": "",
        "personality": "",
        "scenario": "",
        "first_mes": "hi",
        "mes_example": "",
    }
    png = png_with(text_chunk(b"Chara", base64.b64encode(json.dumps(v1).encode()))) + b"trailing bytes"
    card = read_png_card(png)
    assert (V2, "Old", "hi") == (card.spec, card.data.name, card.data.first_mes)
    out = write_png_card(png, round_trip(card))
    assert out.endswith(b"IEND\xaeB`\x82trailing bytes")
    assert card_to_obj(card) == without_ours(card_to_obj(read_png_card(out)))


def test_a_damaged_remainder_is_a_clear_error() -> None:
    """A remainder read back from storage that is not a card's shape is refused, not half-used."""
    profile, memories, remainder = card_to_persona(
        parse_card_json(fixture_bytes("v2_card.json")), persona_id="p1"
    )
    damages: list[dict[str, Any]] = [
        {"data": []},
        {"spec": "nope"},
        {"data": {"character_book": {"entries": [5]}}},
    ]
    for damage in damages:
        broken = remainder.model_copy(update={"card": {**remainder.card, **damage}})
        with pytest.raises(CardError, match="stored card remainder is unusable"):
            persona_to_card(profile, memories, broken, spec=V2)
