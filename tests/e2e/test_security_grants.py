"""Who may serve a capability, and who may reach a person's own browser.

Regression tests for two findings of the outside attack, with a real bus
process, real persona daemons and the real CLI; the attackers, a stand-in
inference provider and the paired extension are raw WebSocket clients that
speak docs/protocol.md by hand (the extension's with the very token the real
pairing code path wrote into its config.json):

* any token could declare ``capabilities: ["inference"]`` in its hello and so
  receive the personas' prompts: now only a ``provide:inference`` grant may;
* ``cap:browser`` fell back to a person's own browser extension, and every
  persona token could ``screenshot@cap:browser``: now the extension is never
  a ``cap:`` provider, and personas hold browser grants only when given them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from daemon.client import BusClient
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT, run_cli, start_bus_process

pytestmark = pytest.mark.slow

SUBPROTOCOL = Subprotocol("personad.v1.json")
CLOSE_POLICY_VIOLATION = 1008


async def raw_hello(
    url: str, token: str, *, kind: str, name: str, capabilities: tuple[str, ...] = ()
) -> tuple[ClientConnection, dict[str, Any]]:
    """Open a JSON-subprotocol connection and say hello with the token in params (browser style)."""
    ws = await connect(url, subprotocols=[SUBPROTOCOL], open_timeout=WAIT)
    params = {"protocol": 1, "kind": kind, "name": name, "token": token, "capabilities": list(capabilities)}
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": params}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def refused_then_closed(ws: ClientConnection) -> int | None:
    """After a refused hello only the close may come: any frame at all is a failure."""
    try:
        frame = await asyncio.wait_for(ws.recv(), WAIT)
    except ConnectionClosed:
        return ws.close_code
    raise AssertionError(f"a refused client received {frame!r}")


def token_from_cli(state, *args: str) -> tuple[str, str]:
    """`personad token add ARGS` for real; returns (name, plaintext)."""
    done = run_cli(state, "token", "add", *args)
    assert 0 == done.returncode, done.stderr
    match = re.search(r"^token \w+ \((\S+), .*\n^PERSONAD_TOKEN=(pd_\S+)$", done.stdout, re.MULTILINE)
    assert match is not None, done.stdout
    return match.group(1), match.group(2)


async def serve_recording(ws: ClientConnection, received: list[dict[str, Any]], answer: Any) -> None:
    """Answer every request with ``answer`` (an ``{"error": …}`` dict or a result), keeping each."""
    with contextlib.suppress(ConnectionClosed):
        async for frame in ws:
            message = json.loads(frame)
            if "method" in message and "id" in message:
                received.append(message)
                reply = {"jsonrpc": "2.0", "id": message["id"]}
                reply.update(answer if isinstance(answer, dict) and "error" in answer else {"result": answer})
                await ws.send(json.dumps(reply))


async def test_only_a_provide_grant_lets_a_client_serve_cap_inference(state, spawn) -> None:
    """Observer and persona tokens claiming inference are refused and get nothing; provide:inference works."""
    _bus, url = start_bus_process(spawn)
    # The real persona daemon: it issues itself its token (development) and
    # sends every chat's prompt, memories included, to cap:inference.
    spawn("persona", "demo", env={"PERSONAD_URL": url}).wait_for_line(
        r"connected url=\S+ client_id=persona:demo\b", timeout=WAIT * 2
    )
    _, spy = token_from_cli(state, "--name", "spy")  # role observer, subject cli:*
    mallory = state.persona_token("mallory", create=True)

    claimants = ((spy, "cli", "spy", "spy"), (mallory, "persona", "mallory", "persona:mallory"))
    for token, kind, name, token_name in claimants:
        ws, answer = await raw_hello(url, token, kind=kind, name=name, capabilities=("inference",))
        assert "result" not in answer, f"{kind}:{name} was accepted as a provider of inference"
        assert ErrorCode.FORBIDDEN == answer["error"]["code"]
        assert f"token {token_name!r} may not provide inference" in answer["error"]["message"]
        assert CLOSE_POLICY_VIOLATION == await refused_then_closed(ws)

    admin = state.admin_token
    async with BusClient(url, token=admin, kind="cli", name="person") as person:
        clients = {c["id"]: c for c in (await person.call("bus.clients"))["clients"]}
        assert {"cli:person", "persona:demo"} == set(clients)
        # The persona role provides chat; bus.clients names each client's token.
        assert ("persona:demo", ["chat"]) == (
            clients["persona:demo"]["token"],
            clients["persona:demo"]["capabilities"],
        )
        # Nothing provides inference, so the persona's prompt goes nowhere.
        with pytest.raises(RpcError) as offline:
            await person.call("chat", {"message": "what do you remember?"}, to="persona:demo")
        assert ErrorCode.TARGET_OFFLINE == offline.value.code
        assert "no inference service is on the bus" in offline.value.message

        # A token granted provide:inference (personad token add --provide) may serve it.
        provider_name, provider_token = token_from_cli(
            state, "--name", "fake-inference", "--role", "service", "--subject", "inference:*",
            "--provide", "inference",
        )  # fmt: skip
        ws, answer = await raw_hello(
            url, provider_token, kind="inference", name="fake", capabilities=("inference",)
        )
        assert "provide:inference" in answer["result"]["grants"]
        received: list[dict[str, Any]] = []
        server = asyncio.ensure_future(
            serve_recording(ws, received, {"error": {"code": 1, "message": "test provider declines"}})
        )
        try:
            listed = await person.call("bus.clients", {"capability": "inference"})
            assert [("inference:fake", provider_name, ["inference"])] == [
                (c["id"], c["token"], c["capabilities"]) for c in listed["clients"]
            ]
            with pytest.raises(RpcError, match="test provider declines"):
                await person.call("chat", {"message": "hello"}, to="persona:demo")
            assert [("inference.generate", "persona:demo")] == [(m["method"], m["from"]) for m in received]
        finally:
            await ws.close()
            await server


async def test_a_persons_extension_is_never_a_cap_provider_and_personas_need_browser_grants(
    state, spawn, tmp_path
) -> None:
    """No worker: cap:browser is offline for personas, never the extension; only a grant naming it does."""
    _bus, url = start_bus_process(spawn)
    paired = run_cli(state, "extension", "pair", "--name", "user", "--out", str(tmp_path / "ext"), url=url)
    assert 0 == paired.returncode, paired.stderr
    extension_token = json.loads((tmp_path / "ext" / "config.json").read_text())["token"]

    # The extension's own token may not declare capability browser (the old extension did).
    ws, answer = await raw_hello(
        url, extension_token, kind="extension", name="user", capabilities=("browser",)
    )
    assert "result" not in answer, "the extension was accepted as a provider of cap:browser"
    assert ErrorCode.FORBIDDEN == answer["error"]["code"]
    assert CLOSE_POLICY_VIOLATION == await refused_then_closed(ws)

    # As the extension connects now, with no capability; it keeps every request it gets.
    extension, answer = await raw_hello(url, extension_token, kind="extension", name="user")
    assert "extension:user" == answer["result"]["client_id"]
    received: list[dict[str, Any]] = []
    server = asyncio.ensure_future(serve_recording(extension, received, {"value": "the person's cookie"}))
    try:
        # A real persona daemon holding both browser grants, asked to read a page's cookies.
        browser_grants = ("screenshot@cap:browser", "browser_js@cap:browser")
        demo = state.persona_token("demo", create=True, grants=browser_grants)
        spawn("persona", "demo", env={"PERSONAD_URL": url, "PERSONAD_TOKEN": demo}).wait_for_line(
            r"connected url=\S+ client_id=persona:demo\b", timeout=WAIT * 2
        )
        async with BusClient(url, token=state.admin_token, kind="cli", name="person") as person:
            for method, params in (("browser_js", {"script": "document.cookie"}), ("screenshot", {})):
                with pytest.raises(RpcError) as offline:
                    await person.call(method, params, to="persona:demo")
                assert (ErrorCode.TARGET_OFFLINE, "cap:browser is not connected") == (
                    offline.value.code,
                    offline.value.message,
                ), method

        # Persona tokens straight on the bus: granted cap:browser is not granted the extension,
        # and a persona token without browser grants may not even screenshot@cap:browser.
        ada = state.persona_token("ada", create=True, grants=browser_grants)
        plain = state.persona_token("plain", create=True)
        async with (
            BusClient(url, token=ada, kind="persona", name="ada") as as_ada,
            BusClient(url, token=plain, kind="persona", name="plain") as as_plain,
        ):
            with pytest.raises(RpcError) as offline:
                await as_ada.call("browser_js", {"script": "document.cookie"}, to="cap:browser")
            assert ErrorCode.TARGET_OFFLINE == offline.value.code
            with pytest.raises(RpcError) as forbidden:
                await as_ada.call("browser_js", {"script": "document.cookie"}, to="extension:user")
            assert ErrorCode.FORBIDDEN == forbidden.value.code
            with pytest.raises(RpcError) as forbidden:
                await as_plain.call("screenshot", {}, to="cap:browser")
            assert (ErrorCode.FORBIDDEN, "token 'persona:plain' may not call screenshot on cap:browser") == (
                forbidden.value.code,
                forbidden.value.message,
            )
        assert [] == received, "a persona's request reached the person's browser"

        # A caller granted that very target reaches it, for that method only.
        _, helper = token_from_cli(state, "--name", "helper", "--grant", "screenshot@extension:user")
        async with BusClient(url, token=helper, kind="cli", name="helper") as as_helper:
            shot = await as_helper.call("screenshot", {}, to="extension:user")
            assert {"value": "the person's cookie"} == shot
            with pytest.raises(RpcError) as forbidden:
                await as_helper.call("browser_js", {"script": "1"}, to="extension:user")
            assert ErrorCode.FORBIDDEN == forbidden.value.code
        assert [("screenshot", "cli:helper")] == [(m["method"], m["from"]) for m in received]
    finally:
        await extension.close()
        await server


async def test_a_persona_may_provide_what_its_config_declares(state, spawn, tmp_path) -> None:
    """A persona's own token carries provide:<cap> for each capability its config declares."""
    config_dir = tmp_path / "config" / "personas"
    config_dir.mkdir(parents=True)
    (config_dir / "scribe.toml").write_text(
        'id = "scribe"\nname = "Scribe"\ncapabilities = ["chat", "summaries"]\n', "utf-8"
    )
    _, url = start_bus_process(spawn)
    spawn(
        "persona", "scribe", env={"PERSONAD_URL": url, "PERSONAD_CONFIG_DIR": str(tmp_path / "config")}
    ).wait_for_line(r"connected url=\S+ client_id=persona:scribe\b", timeout=WAIT * 2)
    async with BusClient(url, token=state.admin_token, kind="cli", name="person") as person:
        clients = {c["id"]: c for c in (await person.call("bus.clients"))["clients"]}
    assert ["chat", "summaries"] == clients["persona:scribe"]["capabilities"]
    entry = next(e for e in state.tokens().entries() if e.name == "persona:scribe")
    assert entry.may_provide("summaries")
    assert not entry.may_provide("inference")
