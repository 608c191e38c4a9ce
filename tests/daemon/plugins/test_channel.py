"""The channel's methods as a plugin sees them: what each permission reaches, and bad requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from daemon.client import BusClient
from daemon.persona.daemon import PersonaDaemon
from tests.daemon.plugins.conftest import MakePlugin, SigningKey

Connect = Callable[..., Awaitable[BusClient]]


async def run(connect: Connect, folder: Any, payload: Any = None) -> dict[str, Any]:
    admin = await connect()
    await admin.call("persona.plugin.add", {"path": str(folder)}, to="persona:ada")
    result: dict[str, Any] = await admin.call(
        "persona.plugin.run", {"plugin_id": folder.name, "input": payload}, to="persona:ada"
    )
    return result


async def test_documents_are_the_artifacts_but_not_brain_exports(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    artifacts = persona.session_dir.artifacts
    (artifacts / "notes").mkdir()
    (artifacts / "notes" / "plan.md").write_text("# Plan\nship in March\n")
    (artifacts / "exports").mkdir()
    (artifacts / "exports" / "brain-1.json").write_text('{"memories": ["secret"]}')
    folder = make_plugin(
        "reader",
        """
        import personad_plugin as host
        names = host.list_documents()
        try:
            host.read_document("exports/brain-1.json")
            exported = "read"
        except host.ChannelError as exc:
            exported = exc.reason
        host.finish({"names": names, "plan": host.read_document("notes/plan.md"), "export": exported})
        """,
        permissions=("read_documents",),
    )
    result = await run(connect, folder)
    assert result["ok"], result
    assert {"names": ["notes/plan.md"], "plan": "# Plan\nship in March\n", "export": "bad_request"} == (
        result["output"]
    )


async def test_memories_written_by_a_plugin_carry_its_name(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin(
        "scribe",
        """
        import personad_plugin as host
        host.finish({"id": host.write_memory("the plugin saw the quarterly numbers", context={"n": 3})})
        """,
        permissions=("write_memories", "read_memories"),
    )
    result = await run(connect, folder)
    assert result["ok"], result
    admin = await connect()
    (hit,) = (await admin.call("memory.recall", {"query": "quarterly"}, to="persona:ada"))["hits"]
    assert (result["output"]["id"], "plugin:scribe", {"n": 3}) == (hit["id"], hit["source"], hit["context"])


async def test_bad_requests_are_answered_and_write_nothing(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    """Names that would leave the plugin's artifact folder, wrong types and unknown methods: refused."""
    folder = make_plugin(
        "sloppy",
        """
        import personad_plugin as host
        reasons = []
        for method, params in [
            ("write_artifact", {"name": "../../brain.sqlite", "content": "x"}),
            ("write_artifact", {"name": ".hidden", "content": "x"}),
            ("write_artifact", {"name": "ok.md", "content": 5}),
            ("read_memories", {"query": "x", "limit": 10_000}),
            ("shell", {"cmd": "id"}),
        ]:
            try:
                host.call(method, **params)
                reasons.append("answered")
            except host.ChannelError as exc:
                reasons.append(exc.reason)
        host.finish(reasons)
        """,
        permissions=("write_artifacts",),
    )
    result = await run(connect, folder)
    assert result["ok"], result
    assert ["bad_request", "bad_request", "bad_request", "permission_denied", "unknown_method"] == result[
        "output"
    ]
    assert 5 == result["denied"]
    assert not (persona.session_dir.artifacts / "plugins").exists()
