"""The texts the text-to-persona path reads: passages of a corpus, each with a stable id.

A corpus is a directory, a text file or a JSONL file (docs/hub_formats.md,
"Corpus formats"); ``None`` is the public-domain sample shipped in
``corpus_sample/`` (its sources are listed in ``corpus_sample/PROVENANCE.md``).

Passages are short on purpose: the default model is SmolLM2-135M, whose
prompt must hold an instruction, a worked example and the passage, so a
passage is a few paragraphs (about 400 to 900 characters), never a chapter.

Files are read line by line and the loader stops at ``max_passages``, so a
corpus of a gigabyte costs the memory of the passages kept, not of the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from daemon.errors import PersonadError

__all__ = [
    "DEFAULT_MAX_PASSAGES",
    "MAX_CHARS",
    "SAMPLE_DIR",
    "TARGET_CHARS",
    "CorpusError",
    "Passage",
    "load_corpus",
]

#: The shipped sample (public domain; see PROVENANCE.md beside it).
SAMPLE_DIR: Final = Path(__file__).parent / "corpus_sample"
#: Paragraphs are merged until a passage has at least this many characters.
TARGET_CHARS: Final = 400
#: No passage is longer: an overlong paragraph is cut at sentence ends.
MAX_CHARS: Final = 900
#: How many passages a load keeps unless told otherwise.
DEFAULT_MAX_PASSAGES: Final = 100_000
#: A JSONL line longer than this is refused (a passage is short; this is a runaway file).
MAX_LINE_CHARS: Final = 1 << 20
_SUFFIXES: Final = (".txt", ".md", ".jsonl")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class CorpusError(PersonadError):
    """Raised when a corpus cannot be read: the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Passage:
    """One passage: ``id`` is stable across loads of the same corpus (it names the persona's source)."""

    id: str
    text: str
    domain: str | None = None


def load_corpus(
    path: Path | None,
    *,
    max_passages: int = DEFAULT_MAX_PASSAGES,
    target_chars: int = TARGET_CHARS,
    max_chars: int = MAX_CHARS,
) -> list[Passage]:
    """The passages of a corpus, in a stable order, at most ``max_passages`` of them.

    ``path``: None (the shipped sample), a directory (its ``*.txt``, ``*.md``
    and ``*.jsonl`` files in sorted order, not recursing), a ``.txt``/``.md``
    file, or a ``.jsonl`` file. Text files get the domain their name is given
    in a ``PROVENANCE.md`` beside them (``- domain: law`` under a ``## file``
    heading), JSONL lines their own ``domain``.
    """
    if max_passages < 1:
        raise CorpusError(f"max_passages must be at least 1, got {max_passages}")
    if not 0 < target_chars <= max_chars:
        raise CorpusError(f"need 0 < target_chars <= max_chars, got {target_chars} and {max_chars}")
    root = SAMPLE_DIR if path is None else path
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in _SUFFIXES)
        files = [p for p in files if p.name != "PROVENANCE.md"]
        domains = _provenance_domains(root / "PROVENANCE.md")
    elif root.is_file():
        if root.suffix not in _SUFFIXES:
            raise CorpusError(f"{root}: not a corpus file; use a .txt, .md or .jsonl file, or a directory")
        files = [root]
        domains = _provenance_domains(root.parent / "PROVENANCE.md")
    else:
        raise CorpusError(f"{root}: no such file or directory; give a corpus file or directory")
    out: list[Passage] = []
    seen: set[str] = set()
    for file in files:
        if file.suffix == ".jsonl":
            passages = _jsonl_passages(file)
        else:
            passages = _text_passages(file, domains.get(file.name), target_chars, max_chars)
        for passage in passages:
            if passage.id in seen:
                raise CorpusError(
                    f"{file}: passage id {passage.id!r} occurs twice in the corpus; ids must be unique"
                )
            seen.add(passage.id)
            out.append(passage)
            if len(out) >= max_passages:
                return out
    if not out:
        raise CorpusError(f"{root}: the corpus has no passages; add text to a .txt, .md or .jsonl file")
    return out


def _open_lines(file: Path) -> Iterator[tuple[int, str]]:
    try:
        with file.open(encoding="utf-8-sig", newline=None) as handle:
            yield from enumerate(handle, start=1)
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8"
        ) from None
    except OSError as exc:
        raise CorpusError(
            f"{file}: cannot be read ({exc.strerror}); check it exists and is readable"
        ) from None


def _paragraphs(file: Path) -> Iterator[str]:
    """Paragraphs (runs of non-blank lines, joined by spaces), read line by line."""
    lines: list[str] = []
    size = 0
    for _, line in _open_lines(file):
        stripped = line.strip()
        if stripped:
            lines.append(stripped)
            size += len(stripped) + 1
            if size > MAX_LINE_CHARS:  # a file with no blank lines: emit what we have
                yield " ".join(lines)
                lines, size = [], 0
        elif lines:
            yield " ".join(lines)
            lines, size = [], 0
    if lines:
        yield " ".join(lines)


def _split_long(text: str, max_chars: int) -> Iterator[str]:
    """An overlong paragraph cut at sentence ends (or, failing those, at spaces) into parts <= max_chars."""
    piece = ""
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:  # one sentence over the limit: cut it at a space
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if piece:
                yield piece
                piece = ""
            yield sentence[:cut].strip()
            sentence = sentence[cut:].strip()
        if not sentence:
            continue
        if piece and len(piece) + 1 + len(sentence) > max_chars:
            yield piece
            piece = sentence
        else:
            piece = f"{piece} {sentence}" if piece else sentence
    if piece:
        yield piece


def _text_passages(file: Path, domain: str | None, target_chars: int, max_chars: int) -> Iterator[Passage]:
    stem = file.stem
    count = 0
    current = ""

    def make(text: str) -> Passage:
        nonlocal count
        count += 1
        return Passage(id=f"{stem}:{count}", text=text, domain=domain)

    for paragraph in _paragraphs(file):
        for part in _split_long(paragraph, max_chars) if len(paragraph) > max_chars else (paragraph,):
            if current and len(current) + 2 + len(part) > max_chars:
                yield make(current)
                current = ""
            current = f"{current}\n\n{part}" if current else part
            if len(current) >= target_chars:
                yield make(current)
                current = ""
    if current:
        yield make(current)


def _jsonl_passages(file: Path) -> Iterator[Passage]:
    for number, line in _open_lines(file):
        where = f"{file}:{number}"
        if len(line) > MAX_LINE_CHARS:
            raise CorpusError(f"{where}: line longer than {MAX_LINE_CHARS} characters; split the text")
        if not line.strip():
            continue  # blank lines (a trailing newline, a separator) carry nothing
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}: not JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise CorpusError(f'{where}: a JSON {type(obj).__name__}, not an object with a "text" member')
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f'{where}: no "text" string; each line needs {{"text": "..."}}')
        raw_id = obj.get("id")
        if raw_id is None:
            passage_id = f"{file.stem}:{number}"
        elif (
            isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and _ID_PATTERN.match(f"{raw_id}")
        ):
            passage_id = str(raw_id)
        else:
            raise CorpusError(
                f'{where}: "id" {raw_id!r} is not a usable id (letters, digits, _ . : -, at most 128); '
                "fix it or leave it out"
            )
        domain = obj.get("domain")
        if domain is not None and (not isinstance(domain, str) or not 0 < len(domain) <= 80):
            raise CorpusError(f'{where}: "domain" must be a string of 1 to 80 characters')
        yield Passage(id=passage_id, text=text.strip(), domain=domain)


_HEADING = re.compile(r"^##\s+(\S.*?)\s*$")
_DOMAIN_LINE = re.compile(r"^[-*]\s*domain:\s*(\S.*?)\s*$", re.IGNORECASE)


def _provenance_domains(file: Path) -> dict[str, str]:
    """File name -> domain, from ``## <file name>`` headings each followed by a ``- domain: <label>`` line."""
    if not file.is_file():
        return {}
    domains: dict[str, str] = {}
    current: str | None = None
    for _, line in _open_lines(file):
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1).strip("`")
            continue
        domain = _DOMAIN_LINE.match(line)
        if domain and current is not None:
            domains[current] = domain.group(1)[:80]
    return domains
