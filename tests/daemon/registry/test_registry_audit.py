"""The audit log: every kind of tampering is found, and it holds no personal content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.registry.audit import GENESIS, AuditLog, head_path, verify
from daemon.registry.errors import AuditError


def written(tmp_path: Path, n: int = 5) -> tuple[AuditLog, list[bytes]]:
    log = AuditLog(tmp_path / "audit.log")
    for i in range(n):
        log.append(actor="cli:x", action="persona.update", persona_id=f"p{i}", details={"fields": ["name"]})
    return log, log.path.read_bytes().splitlines(keepends=True)


def test_clean_log_verifies_and_chains_to_genesis(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    report = verify(log.path)
    assert (True, 5, None) == (report.ok, report.entries, report.bad_line)
    first = json.loads(lines[0])
    assert (1, GENESIS, "cli:x", "p0") == (first["seq"], first["prev"], first["actor"], first["persona_id"])
    assert verify(tmp_path / "none.log").ok  # no log yet: nothing to doubt


@pytest.mark.parametrize("index", range(5))
def test_editing_any_one_line_is_detected(tmp_path: Path, index: int) -> None:
    log, lines = written(tmp_path)
    lines[index] = lines[index].replace(b'"p%d"' % index, b'"zz"')
    log.path.write_bytes(b"".join(lines))
    report = verify(log.path)
    assert not report.ok
    # The edited line itself is fine JSON; its successor (or the head, for the last) no longer matches.
    assert report.bad_line == min(index + 2, 5)


@pytest.mark.parametrize("index", range(5))
def test_removing_any_one_line_is_detected(tmp_path: Path, index: int) -> None:
    log, lines = written(tmp_path)
    del lines[index]
    log.path.write_bytes(b"".join(lines))
    assert not verify(log.path).ok


def test_reordering_and_truncating_are_detected(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    log.path.write_bytes(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))
    assert (False, 2) == (verify(log.path).ok, verify(log.path).bad_line)
    log.path.write_bytes(b"".join(lines)[:-10])
    report = verify(log.path)
    assert (False, 5) == (report.ok, report.bad_line)
    assert "truncated" in report.reason
    log.path.write_bytes(b"".join(lines[:3]))  # clean cut at a line end: the head knows better
    assert not verify(log.path).ok
    log.path.write_bytes(b"")
    assert not verify(log.path).ok


def test_append_refuses_to_build_on_a_damaged_tail(tmp_path: Path) -> None:
    log, lines = written(tmp_path)
    log.path.write_bytes(b"".join(lines[:-1]))
    before = log.path.read_bytes()
    with pytest.raises(AuditError, match="audit verify"):
        log.append(actor="cli:x", action="persona.create", persona_id="p9")
    assert before == log.path.read_bytes()
    head_path(log.path).write_text("not json")
    with pytest.raises(AuditError, match="unreadable head"):
        log.append(actor="cli:x", action="persona.create", persona_id="p9")


def test_a_crash_between_the_line_and_its_head_is_taken_up_by_the_next_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 after the line's fsync, before the head moved: exactly one chained line past the head.
    The next append takes it in and goes on (found by the soak killing the registry mid-write)."""
    log, _ = written(tmp_path)
    head = head_path(log.path).read_bytes()
    log.append(actor="cli:x", action="persona.create", persona_id="p5")
    head_path(log.path).write_bytes(head)  # as if the crash came just before the head moved
    assert not verify(log.path).ok
    assert 7 == log.append(actor="cli:x", action="persona.create", persona_id="p6")
    assert (True, 7) == (verify(log.path).ok, verify(log.path).entries)
    assert "a crash between the two" in caplog.text


def test_a_crash_on_the_very_first_entry_is_taken_up_too(tmp_path: Path) -> None:
    log, _ = written(tmp_path, 1)
    head_path(log.path).unlink()
    assert 2 == log.append(actor="cli:x", action="persona.create", persona_id="p1")
    assert verify(log.path).ok


def test_more_than_one_line_past_the_head_or_a_foreign_line_still_stops_appends(tmp_path: Path) -> None:
    log, _ = written(tmp_path)
    head = head_path(log.path).read_bytes()
    log.append(actor="cli:x", action="persona.create", persona_id="p5")
    log.append(actor="cli:x", action="persona.create", persona_id="p6")
    head_path(log.path).write_bytes(head)  # two lines past the head: not one crash
    before = log.path.read_bytes()
    with pytest.raises(AuditError, match="audit verify"):
        log.append(actor="cli:x", action="persona.create", persona_id="p7")
    assert before == log.path.read_bytes()

    log, lines = written(tmp_path / "foreign")
    forged = json.loads(lines[-1])
    forged["seq"] += 1  # chains to nothing the head knows: prev is the line before's, not the head's
    log.path.write_bytes(b"".join(lines) + json.dumps(forged, separators=(",", ":")).encode() + b"\n")
    with pytest.raises(AuditError, match="audit verify"):
        log.append(actor="cli:x", action="persona.create", persona_id="p7")
