"""Importers: PersonaHub, FinePersonas, plain and our own lines; ids, sources and errors naming file:line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from daemon.hub.designer import render
from daemon.hub.importers import MAX_LINE_BYTES, PersonaImportError, read_personas
from protocol.hub_persona import HUB_PERSONA_ID_PATTERN, HubPersona

DATA = Path(__file__).parent / "data"


def test_finepersonas_sample_keeps_ids_and_labels() -> None:
    personas = list(read_personas(DATA / "finepersonas_sample.jsonl"))
    assert len(personas) == 40
    first = json.loads((DATA / "finepersonas_sample.jsonl").read_text().splitlines()[0])
    assert personas[0].id == first["id"].strip("<>")
    assert personas[0].attributes.interests == json.loads(first["labels"])
    assert personas[0].source == "finepersonas_sample.jsonl:1"
    assert all(p.path == "import" and re.match(HUB_PERSONA_ID_PATTERN, p.id) for p in personas)
    assert len({p.id for p in personas}) == 40


def test_personahub_sample_takes_the_input_persona() -> None:
    personas = list(read_personas(DATA / "personahub_sample.jsonl"))
    assert len(personas) == 20
    assert personas[0].persona.startswith("A retired lighthouse keeper")
    assert [p.id for p in personas[:3]] == ["imp-1", "imp-2", "imp-3"]
    assert personas[2].source == "personahub_sample.jsonl:3"


def test_plain_lines_repeated_ids_and_blank_lines(tmp_path: Path) -> None:
    file = tmp_path / "mixed.jsonl"
    file.write_text(
        '{"persona": "A baker."}\n\n'
        '{"id": "p 1", "persona": "A potter."}\n'
        '{"id": "p 1", "persona": "A weaver."}\n'
        '{"id": "p-1-2", "persona": "A smith."}\n\n'
    )
    personas = list(read_personas(file))
    assert [p.id for p in personas] == ["imp-1", "p-1", "p-1-2", "p-1-2-2"]
    assert personas[0].source == "mixed.jsonl:1"
    assert [p.id for p in read_personas(file)] == [p.id for p in personas]  # deterministic


def test_our_own_format_round_trips(tmp_path: Path) -> None:
    original = HubPersona(id="run-7", persona="A ferryman on the Rhine.", path="text", source="corpus:3")
    file = tmp_path / "ours.jsonl"
    file.write_text("\n".join(render([original], "hub")) + "\n")
    assert list(read_personas(file)) == [original]


def test_rendered_dataset_formats_import_back(tmp_path: Path) -> None:
    source = list(read_personas(DATA / "finepersonas_sample.jsonl"))[:5]
    for fmt in ("personahub", "finepersonas"):
        file = tmp_path / f"{fmt}.jsonl"
        file.write_text("\n".join(render(source, fmt)) + "\n")
        back = list(read_personas(file))
        assert [p.persona for p in back] == [p.persona for p in source]
    back = list(read_personas(tmp_path / "finepersonas.jsonl"))
    assert [p.id for p in back] == [p.id for p in source]
    assert [p.attributes.interests for p in back] == [p.attributes.interests for p in source]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"persona": "ok"}\nnot json\n', "not JSON"),
        ('{"persona": "ok"}\n[1, 2]\n', "not an object"),
        ('{"persona": "ok"}\n{"name": "x"}\n', "no persona text"),
        ('{"persona": "ok"}\n{"persona": "   "}\n', "empty"),
        ('{"persona": "ok"}\n{"path": "text", "persona": "x", "id": "bad id!"}\n', "not a valid persona"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, body: str, reason: str) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text(body)
    with pytest.raises(PersonaImportError, match=rf"bad\.jsonl:2: .*{reason}"):
        list(read_personas(file))


def test_overlong_line_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "long.jsonl"
    file.write_text(json.dumps({"persona": "x" * (MAX_LINE_BYTES + 10)}) + "\n")
    with pytest.raises(PersonaImportError, match=r"long\.jsonl:1: line longer than"):
        list(read_personas(file))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PersonaImportError, match="cannot be read"):
        list(read_personas(tmp_path / "absent.jsonl"))
