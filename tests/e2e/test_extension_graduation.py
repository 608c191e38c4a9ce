"""The extension shows a persona's graduation, and only academy:main's.

The real thing end to end: a ``personad bus`` process, the extension paired
by the CLI and loaded into headless Chromium (the harness of
tests/e2e/test_extension.py), and publishers that are real bus clients
holding tokens issued by ``personad token add``. What the extension showed is
read in its service worker over CDP: ``chrome.notifications.getAll()`` for
what is on screen, ``globalThis.personad`` for each one's text and for the
events it ignored and why.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import protocol.commands.inference as inference
from daemon.browser.chromium import Chromium
from daemon.client import BusClient
from protocol import ErrorCode, RpcError
from protocol.commands.academy import GRADUATED_TOPIC, EvolutionRecordParams, GraduatedEvent, Rules
from protocol.profile import PERSONA_ID_PATTERN
from tests.conftest import REPO
from tests.e2e.test_extension import ORIGIN, ServiceWorker, call, cli, until

MIRA = GraduatedEvent(
    persona_id="mira",
    persona_name="Mira",
    domain="baking",
    adapter="mira.baking",
    sha256="0123456789abcdef" * 4,
    pass_before=0.62,
    pass_after=0.91,
    run_id="run-0123456789ab",
).model_dump()
MIRA_SHOWN = {
    "title": "Mira graduated",
    "message": "baking: 62% → 91% on the Academy exam",
    "publisher": "academy:main",
}

#: Data that is not a GraduatedEvent, and the member the extension must name.
MALFORMED: list[tuple[Any, str]] = [
    (None, "data"),
    ("Mira graduated", "data"),
    ([MIRA], "data"),
    ({k: v for k, v in MIRA.items() if k != "pass_after"}, "pass_after"),
    ({**MIRA, "pass_after": 1.5}, "pass_after"),
    ({**MIRA, "pass_after": "0.91"}, "pass_after"),
    ({**MIRA, "pass_before": True}, "pass_before"),
    ({**MIRA, "persona_name": ""}, "persona_name"),
    ({**MIRA, "persona_name": "M" * 129}, "persona_name"),
    ({**MIRA, "persona_name": "Mira\u202e%19 :gnikab"}, "persona_name"),
    ({**MIRA, "persona_name": b"Mira"}, "persona_name"),  # {"$bytes": ...} in JSON
    ({**MIRA, "domain": "d" * 201}, "domain"),
    ({**MIRA, "persona_id": "../mira"}, "persona_id"),
    ({**MIRA, "adapter": "Mira Baking"}, "adapter"),
    ({**MIRA, "sha256": "zz"}, "sha256"),
    ({**MIRA, "run_id": "run-1"}, "run_id"),
    ({**MIRA, "html": "<img src=x onerror=alert(1)>"}, "html"),
]

SHOWN = (
    "(async () => { const shown = await chrome.notifications.getAll();"
    " return personad.notifications.filter(n => n.id in shown)"
    ".map(n => ({title: n.title, message: n.message, publisher: n.publisher})); })()"
)


def test_the_extension_checks_what_the_python_models_check() -> None:
    """graduation.js's patterns and bounds are protocol/'s."""
    source = (REPO / "extension" / "graduation.js").read_text()

    def regex(name: str) -> str:
        found = re.search(rf"export const {name} = /(.*)/;", source)
        assert found is not None, name
        return found.group(1)

    assert PERSONA_ID_PATTERN == regex("PERSONA_ID_RE")
    assert inference.ADAPTER_NAME_PATTERN == regex("ADAPTER_NAME_RE")
    assert inference.SHA256_PATTERN == regex("SHA256_RE")
    # GraduatedEvent's run_id is a plain str; EvolutionRecordParams pins its form.
    run_id = EvolutionRecordParams.model_fields["run_id"].metadata
    assert [regex("RUN_ID_RE")] == [getattr(m, "pattern", None) for m in run_id]
    lengths = {
        name: next(m.max_length for m in Rules.model_fields[name].metadata if hasattr(m, "max_length"))
        for name in ("persona_name", "domain")
    }
    assert f"MAX_PERSONA_NAME_CHARS = {lengths['persona_name']};" in source
    assert f"MAX_DOMAIN_CHARS = {lengths['domain']};" in source
    assert f'GRADUATED_TOPIC = "{GRADUATED_TOPIC}";' in source


async def issue(state, url: str, name: str, role: str, subject: str) -> str:
    """A token from ``personad token add``, as a person issues one."""
    code, out, err = await cli(
        state, url, "token", "add", "--name", name, "--role", role, "--subject", subject
    )  # fmt: skip
    assert 0 == code, err
    found = re.search(r"^PERSONAD_TOKEN=(\S+)$", out, re.M)
    assert found is not None, out
    return found.group(1)


async def publish(url: str, token: str, client_id: str, data: Any) -> int:
    kind, _, name = client_id.partition(":")
    async with BusClient(url, token=token, kind=kind, name=name) as client:
        assert client_id == client.client_id
        return await client.publish(GRADUATED_TOPIC, data)


@pytest.mark.slow
async def test_graduations_from_the_academy_alone_become_notifications(state, spawn, tmp_path) -> None:
    """Forged and malformed graduations show nothing; genuine ones show, before and after a reconnect."""
    bus = spawn("bus", "--port", "0", "--allow-origin", ORIGIN)
    url = bus.wait_for_line(r"listening on (ws://\S+)").group(1)
    # persona.* also matches persona.graduated: a forged graduation must not
    # slip through as an ordinary event of a subscribed topic.
    code, _out, err = await cli(
        state, url, "extension", "pair", "--name", "grad", "--out", str(tmp_path / "ext"),
        "--topic", "persona.*",
    )  # fmt: skip
    assert 0 == code, err
    extension_token = json.loads((tmp_path / "ext" / "config.json").read_text())["token"]
    academy_token = await issue(state, url, "academy", "service", "academy:main")
    mira_token = await issue(state, url, "mira", "persona", "persona:mira")

    browser = await Chromium.launch(extensions=[tmp_path / "ext"])
    try:
        sw = ServiceWorker(browser)

        async def subscribed() -> bool:
            topics = await sw.evaluate("globalThis.personad?.subscriptions")
            return ["persona.*", GRADUATED_TOPIC] == sorted(topics or [])

        await until(subscribed, "the extension to subscribe to persona.graduated")

        async def ignored() -> list[dict[str, str]]:
            return list(await sw.evaluate("personad.ignored"))

        # Forged: the same data from a persona, and from the admin's CLI.
        assert 1 == await publish(url, mira_token, "persona:mira", MIRA)
        admin = await call(state, url, "bus", "bus.publish", {"topic": GRADUATED_TOPIC, "data": MIRA})
        assert {"delivered": 1} == admin
        forged = await until(lambda: _at_least(ignored, 2), "the forged events to be ignored")
        assert ["persona:mira", "publisher"] == [forged[0]["publisher"], forged[0]["field"]]
        assert forged[1]["publisher"].startswith("cli:")
        assert all(f["reason"].endswith("is not academy:main") for f in forged)

        # The extension's own token may not publish at all (observer: no bus.publish).
        with pytest.raises(RpcError) as refused:
            await publish(url, extension_token, "extension:forger", MIRA)
        assert ErrorCode.FORBIDDEN == refused.value.code

        # Malformed, from academy:main itself: each ignored, naming its member.
        async with BusClient(url, token=academy_token, kind="academy", name="main") as academy:
            for data, _field in MALFORMED:
                assert 1 == await academy.publish(GRADUATED_TOPIC, data)
            everything = await until(lambda: _at_least(ignored, 2 + len(MALFORMED)), "the malformed events")
            assert [f for _d, f in MALFORMED] == [i["field"] for i in everything[2:]]
            assert {"academy:main"} == {i["publisher"] for i in everything[2:]}
            assert [] == await sw.evaluate(SHOWN)
            assert "connected" == await sw.evaluate("personad.state")

            # Still working: the genuine event shows, once, with the persona's name and score.
            assert 1 == await academy.publish(GRADUATED_TOPIC, MIRA)
            assert [MIRA_SHOWN] == await until(lambda: sw.evaluate(SHOWN), "the graduation notification")

        # After a reconnect the extension subscribes again.
        port = int(url.rsplit(":", 1)[1])
        bus.stop()
        spawn("bus", "--port", str(port), "--allow-origin", ORIGIN).wait_for_line(r"listening on ws://")

        async def resubscribed() -> bool:
            return 2 == await sw.evaluate("personad.stats.connects") and await subscribed()

        await until(resubscribed, "the extension to reconnect and subscribe again")
        ada = {
            **MIRA,
            "persona_id": "ada",
            "persona_name": "Ada",
            "domain": "tax law",
            "run_id": "run-ba9876543210",
        }
        ada |= {"adapter": "ada.tax-law", "pass_before": 0.4, "pass_after": 0.9}
        assert 1 == await publish(url, academy_token, "academy:main", ada)
        ada_shown = {"title": "Ada graduated", "message": "tax law: 40% → 90% on the Academy exam"}
        assert [MIRA_SHOWN, {**ada_shown, "publisher": "academy:main"}] == await until(
            lambda: _at_least(lambda: sw.evaluate(SHOWN), 2), "the second graduation"
        )
    finally:
        await browser.kill()


async def _at_least(read, count: int) -> Any:
    """``read()``'s list once it holds ``count`` items, else None (for until)."""
    items = await read()
    return items if items is not None and len(items) >= count else None
