"""The corpus loader: directories, text files, JSONL, the shipped sample, and clear errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from daemon.hub.corpus import MAX_CHARS, SAMPLE_DIR, CorpusError, load_corpus


def test_shipped_sample_is_varied_and_stable() -> None:
    first = load_corpus(None)
    domains = Counter(p.domain for p in first)
    assert None not in domains
    # enough passages and subjects for a text-to-persona run to draw varied personas from
    assert len(first) >= 250
    assert len(domains) >= 10
    assert min(domains.values()) >= 5
    assert all(len(p.text) <= MAX_CHARS for p in first)
    assert [(p.id, p.text) for p in first] == [(p.id, p.text) for p in load_corpus(None)]
    assert len({p.id for p in first}) == len(first)
    assert (SAMPLE_DIR / "PROVENANCE.md").is_file()


def test_text_file_merges_short_and_splits_long(tmp_path: Path) -> None:
    long = " ".join(f"Sentence number {i} ends here." for i in range(80))
    file = tmp_path / "notes.txt"
    file.write_text(f"Short one.\n\nShort two\ncontinues.\n\n{long}\n")
    passages = load_corpus(file, target_chars=100, max_chars=300)
    assert passages[0].id == "notes:1"
    assert passages[0].text.startswith("Short one.\n\nShort two continues.")
    assert all(len(p.text) <= 300 for p in passages)
    assert all(p.text.rstrip().endswith(".") for p in passages)
    assert "".join(p.text for p in passages).count("ends here.") == 80


def test_directory_reads_sorted_files_and_provenance_domains(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("Bee text. " * 50)
    (tmp_path / "a.txt").write_text("Ay text. " * 50)
    (tmp_path / "c.jsonl").write_text('{"text": "See.", "id": "c-1", "domain": "x"}\n{"text": "Sea."}\n\n')
    (tmp_path / "skip.csv").write_text("ignored")
    (tmp_path / "PROVENANCE.md").write_text("## a.txt\n- domain: alpha\n\n## b.md\n- domain: beta\n")
    passages = load_corpus(tmp_path)
    assert [p.id for p in passages] == ["a:1", "b:1", "c-1", "c:2"]
    assert [p.domain for p in passages] == ["alpha", "beta", "x", None]


def test_max_passages_caps_the_load(tmp_path: Path) -> None:
    file = tmp_path / "many.jsonl"
    file.write_text("".join(f'{{"text": "passage {i}"}}\n' for i in range(1000)))
    assert len(load_corpus(file, max_passages=10)) == 10


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"text": "ok"}\n{oops\n', "not JSON"),
        ('{"text": "ok"}\n{"id": "x"}\n', 'no "text"'),
        ('{"text": "ok"}\n"just a string"\n', "not an object"),
        ('{"text": "ok"}\n{"text": "t", "id": "bad id"}\n', "not a usable id"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path: Path, body: str, reason: str) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text(body)
    with pytest.raises(CorpusError, match=rf"bad\.jsonl:2: .*{reason}"):
        load_corpus(file)


def test_empty_and_missing_corpora_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="no passages"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(tmp_path / "absent")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(tmp_path / "latin.txt")


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a", "id": "same"}\n{"text": "b", "id": "same"}\n')
    with pytest.raises(CorpusError, match="occurs twice"):
        load_corpus(tmp_path)
