"""The soak's ledger finds what it exists to find: lost, duplicated, torn and phantom rows.

The soak's own runs report 0 violations; this shows that a check would have said
otherwise. A real persona (its SQLCipher brain) and a real registry on a real bus;
the rows are written and removed through their own methods, as a fault could, and
bundle imports go through the registry into the real adapter store.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from daemon.brain.keys import brain_path
from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore
from protocol import ErrorCode, RpcError
from tests.daemon.hub.test_service import services
from tests.daemon.persona.running import running_persona
from tests.daemon.registry.conftest import serving  # noqa: F401  (the registry the ledger reads)
from tests.soak.bench_module import load_bench

soak_ledger = load_bench("soak_ledger")
soak_artifacts = load_bench("soak_artifacts")
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


async def test_an_import_is_held_to_its_adapter_and_an_unmade_one_to_leaving_nothing(state, connect) -> None:
    """Bundle imports as the soak sends them, into a real registry and adapter store."""
    client = await connect()
    ledger = soak_ledger.Ledger()
    ledger.extra_checks.append(soak_artifacts.ImportCheck(ledger, client, state.root))
    bundles = soak_artifacts.Bundles()

    async def send(seed: int) -> tuple[str, str, str]:
        nonce = ledger.nonce()
        pid, name = nonce.replace(":", "-"), f"Imported {nonce}"
        data, sha = bundles.make(pid, name, "clerk", f"soak-{ledger.run}-import", seed)
        expect = {"name": name, "role": "clerk", "status": "draft"}
        entry = ledger.begin("import", "cap:registry", nonce, expect, {"persona_id": pid, "adapter": sha})
        params = soak_artifacts.import_params(bundles, data)
        result = await client.call("persona.import", params, to="cap:registry", deadline_ms=60_000)
        soak_ledger.Ledger.settle(entry, row_id=result["profile"]["id"])
        return nonce, pid, sha

    whole, (damaged, _, sha) = await send(1), await send(2)
    assert [] == await ledger.check(client, [])

    # An acknowledged import's adapter damaged in the store; a failed import that left its
    # persona's folder behind (what a registry that never takes an import back leaves).
    weights = AdapterStore.for_state(state.root).object_path(sha) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8] + b"damaged!")
    unmade = ledger.nonce()
    entry = ledger.begin("import", "cap:registry", unmade, {}, {"persona_id": "left-behind", "adapter": sha})
    soak_ledger.Ledger.settle(entry, error=RpcError(ErrorCode.TIMEOUT, "no answer"))
    entry.settled_at -= 60  # long enough ago for its handler to have taken it back
    brain_path(state.root, "left-behind").parent.mkdir(parents=True)
    found = _kinds(await ledger.check(client, [], full=True))
    assert [("torn", damaged), ("torn", unmade)] == found
    assert whole[0] not in {nonce for _, nonce in found}


async def test_hub_jobs_are_held_to_the_ledger_and_one_still_being_asked_for_is_not_a_phantom(
    bus, state, connect
) -> None:
    """A real cap:hub (no inference beside it: its jobs stay listed, generating)."""
    client = await connect()
    ledger = soak_ledger.Ledger()
    hub = soak_artifacts.HubJobs(ledger, client)
    async with services(bus, state):

        async def timed(method: str, call: Any) -> Any:
            return await call()

        assert "ok" == await hub.start_one(timed)
        assert [] == await hub.check(time.monotonic())
        # Stopped (at most two jobs run at once): still listed, still the load's.
        first = next(iter(hub.jobs))
        await client.call("hub.cancel", {"job_id": first}, to="cap:hub")

        # Asked for, and answered only after the check began (the bus was down, say): the hub
        # lists the job; the ledger has it as settled after the check's start.
        nonce = ledger.nonce()
        job = hub.job_id(nonce)
        requirements = {**soak_artifacts.HUB_REQUIREMENTS, "seed": 1}
        asked = ledger.begin("hub", "cap:hub", nonce, {"requirements": requirements, "job_id": job})
        check_began = time.monotonic()
        await client.call("hub.run", {"requirements": requirements, "job_id": job}, to="cap:hub")
        soak_ledger.Ledger.settle(asked, row_id=job)
        # A job this run never asked for, and an acknowledged one the hub does not list.
        stranger = f"soak-{ledger.run}-999999"
        await client.call("hub.run", {"requirements": requirements, "job_id": stranger}, to="cap:hub")
        lost = ledger.nonce()
        entry = ledger.begin(
            "hub", "cap:hub", lost, {"requirements": requirements, "job_id": hub.job_id(lost)}
        )
        soak_ledger.Ledger.settle(entry, row_id=hub.job_id(lost))
        entry.settled_at = check_began - 1  # acknowledged before the check began
        found = _kinds(await hub.check(check_began))
        assert [("lost", lost), ("phantom", stranger)] == found
