"""The soak's ledger finds what it exists to find: lost, duplicated, torn and phantom rows.

The soak's own runs report 0 violations; this shows that a check would have said
otherwise. A real persona (its SQLCipher brain) and a real registry on a real bus;
the rows are written and removed through their own methods, as a fault could.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.daemon.persona.running import running_persona
from tests.daemon.registry.conftest import serving  # noqa: F401  (the registry the ledger reads)
from tests.soak.bench_module import load_bench

soak_ledger = load_bench("soak_ledger")
pytestmark = pytest.mark.usefixtures("serving")


async def _remember(client: Any, ledger: Any, *, nonce: str | None = None, begin: bool = True) -> int:
    """A memory as the soak writes one; ``begin=False``: one the ledger never sent."""
    nonce = nonce or ledger.nonce()
    memory = {"content": f"The soak wrote {nonce}.", "subject": "s", "relevance": 0.5, "kind": "soak"}
    entry = ledger.begin("memory", "persona:ada", nonce, memory) if begin else None
    result = await client.call("memory.remember", memory, to="persona:ada")
    if entry is not None:
        soak_ledger.Ledger.settle(entry, row_id=result["id"])
    return int(result["id"])


def _kinds(violations: list[Any]) -> list[tuple[str, str]]:
    return sorted((v.what, v.nonce) for v in violations)


async def test_each_check_finds_what_went_wrong_since_the_last(bus, state, connect) -> None:
    client = await connect()
    ledger = soak_ledger.Ledger()
    async with running_persona(bus, state, "ada"):
        ids = [await _remember(client, ledger) for _ in range(3)]
        nonces = list(ledger.entries)
        assert [] == await ledger.check(client, ["ada"])

        # An acked row vanishes: the next check (reading only new rows) sees the count change.
        assert 1 == (await client.call("memory.forget", {"ids": [ids[1]]}, to="persona:ada"))["removed"]
        assert [("lost", nonces[1])] == _kinds(await ledger.check(client, ["ada"]))

        # A row the ledger never sent, and a second row of an acked nonce.
        phantom = ledger.nonce()
        await _remember(client, ledger, nonce=phantom, begin=False)
        await _remember(client, ledger, nonce=nonces[0], begin=False)
        expected = [("duplicated", nonces[0]), ("lost", nonces[1]), ("phantom", phantom)]
        assert expected == _kinds(await ledger.check(client, ["ada"]))
        assert expected == _kinds(await ledger.check(client, ["ada"], full=True))

        # A refused write that was stored anyway, and a row that reads back other than sent.
        refused = ledger.nonce()
        entry = ledger.begin("memory", "persona:ada", refused, {"content": "x"})
        soak_ledger.Ledger.settle(entry, refused=True)
        await _remember(client, ledger, nonce=refused, begin=False)
        torn = ledger.nonce()
        entry = ledger.begin("memory", "persona:ada", torn, {"content": f"The soak wrote {torn}!"})
        await _remember(client, ledger, nonce=torn, begin=False)
        soak_ledger.Ledger.settle(entry, row_id=0)
        found = _kinds(await ledger.check(client, ["ada"]))
        assert ("phantom", refused) in found
        assert ("torn", torn) in found
