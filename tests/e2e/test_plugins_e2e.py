"""The two example plugins end to end: signed and trusted with the CLI verbs, installed and run through
the bus by a persona whose chat runs the tiny model in-process."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from daemon.bus import Bus
from daemon.client import BusClient
from daemon.persona.daemon import PersonaDaemon
from daemon.plugins.cli import add_verbs
from daemon.state import StateDir
from tests.conftest import REPO, WAIT
from tests.daemon.inference.conftest import build_tiny_model
from tests.daemon.persona.running import running_persona

EXAMPLES = REPO / "examples" / "plugins"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def plugin_cli(state: StateDir, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="personad")
    verbs = parser.add_subparsers(dest="verb", required=True)
    handlers = add_verbs(lambda name, help: verbs.add_parser(name, help=help))
    args = parser.parse_args(["plugin", *argv])
    return int(handlers["plugin"](args, state, "ws://127.0.0.1:1"))


@pytest.fixture
def signed_examples(state: StateDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """Copies of examples/plugins/*, signed with a new key the operator trusts."""
    assert 0 == plugin_cli(state, "keygen")
    public = capsys.readouterr().out.strip()
    assert 0 == plugin_cli(state, "trust", public, "--name", "examples")
    folders = {}
    for name in ("summarise", "report"):
        folder = shutil.copytree(EXAMPLES / name, tmp_path / "plugins" / name)
        assert 0 == plugin_cli(
            state, "sign", str(folder), "--key", str(state.root / "plugins" / "signing.key")
        )
        folders[name] = folder
    capsys.readouterr()
    return folders


@pytest.fixture
async def ada(
    bus: Bus, state: StateDir, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[PersonaDaemon]:
    monkeypatch.setenv("PERSONAD_INFERENCE", "inprocess")
    monkeypatch.setenv("PERSONAD_MODEL", str(tiny_model))
    async with running_persona(bus, state, "ada", description="A careful analyst.") as daemon:
        yield daemon


async def test_the_summariser_asks_the_persona_through_the_channel(
    ada: PersonaDaemon, connect: Callable[..., Awaitable[BusClient]], signed_examples: dict[str, Path]
) -> None:
    admin = await connect()
    added = await admin.call(
        "persona.plugin.add", {"path": str(signed_examples["summarise"])}, to="persona:ada"
    )
    assert ("summarise", "low", ["chat"]) == (
        added["plugin"]["id"],
        added["plugin"]["risk"],
        added["plugin"]["permissions"],
    )
    text = "The quarterly plan moves the launch to March. Budget rises by ten percent. Ada leads the audit."
    result = await admin.call(
        "persona.plugin.run",
        {"plugin_id": "summarise", "input": {"text": text, "max_tokens": 8}},
        to="persona:ada",
        deadline_ms=int(WAIT * 4000),
    )
    assert result["ok"], result
    assert (1, 0) == (result["calls"], result["denied"])
    output = result["output"]
    assert isinstance(output["summary"], str)
    assert len(text.split()) == output["words_in"]
    # The persona answered in its own chat: the exchange is in its interactions, from the plugin.
    rows = await ada.brain.query(  # type: ignore[union-attr]
        "SELECT with_persona FROM interactions", [], row_limit=10, time_limit=2.0
    )
    assert ["plugin:summarise"] == [row[0] for row in rows.rows]


async def test_the_report_reads_memories_and_writes_a_markdown_artifact(
    ada: PersonaDaemon, connect: Callable[..., Awaitable[BusClient]], signed_examples: dict[str, Path]
) -> None:
    admin = await connect()
    for content in ("The audit found two late invoices", "Audit follow-up is due Friday", "Lunch was good"):
        await admin.call("memory.remember", {"content": content}, to="persona:ada")
    added = await admin.call("persona.plugin.add", {"path": str(signed_examples["report"])}, to="persona:ada")
    assert "medium" == added["plugin"]["risk"]
    result = await admin.call(
        "persona.plugin.run", {"plugin_id": "report", "input": {"topic": "audit"}}, to="persona:ada"
    )
    assert result["ok"], result
    assert {"path": "plugins/report/report-audit.md", "memories": 2, "kinds": {"note": 2}} == result["output"]
    report = (ada.session_dir.artifacts / result["output"]["path"]).read_text()
    assert report.startswith("# Memories: audit\n")
    assert "two late invoices" in report
    assert "due Friday" in report
    assert "Lunch" not in report
    listed = (await admin.call("persona.plugins", to="persona:ada"))["plugins"]
    assert [("report", 1, 0)] == [(p["id"], p["stats"]["runs"], p["stats"]["failures"]) for p in listed]
