"""The cap:hub service on a real bus, with a real inference service (SmolLM2 and MiniLM) beside it.

Grants first (a token without them is refused every method), then a small
job end to end through the bus: progress streamed to the caller, the
output paged, the figures on /metrics; the job list paged, newest first,
with each job's quality report read from its folder, not kept in memory;
then validate inline, and the errors a client gets for what it cannot do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.hub import service as hub_service
from daemon.hub.jobs import Scores
from daemon.hub.qa import validate
from daemon.hub.service import HUB_GRANTS, HubService, hub_token
from daemon.inference.embed import Embedder
from daemon.inference.engine import AsyncEngine
from daemon.inference.service import InferenceService, service_token
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.commands.hub_plan import Requirements
from tests.conftest import REPO, WAIT, eventually

METHODS: dict[str, dict[str, Any]] = {
    "hub.plan": {"count": 1},
    "hub.run": {"requirements": {"count": 1}},
    "hub.status": {},
    "hub.cancel": {"job_id": "x"},
    "hub.personas": {"job_id": "x"},
    "hub.validate": {"personas": []},
    "hub.compose": {"personas": [{"id": "a", "persona": "A potter.", "path": "import"}], "kind": "npc"},
    "hub.register": {
        "persona": {"id": "a", "persona": "A potter.", "path": "import"},
        "persona_id": "potter",
    },
}
SMALL_RUN = {"count": 4, "paths": {"structured": 1.0}, "quality": "fast", "seed": 2}


@contextlib.asynccontextmanager
async def services(
    bus: Bus, state: StateDir, engine: AsyncEngine | None = None, embedder: Embedder | None = None
) -> AsyncIterator[HubService]:
    """hub:main (and, given an engine, inference:main) on ``bus``, each with its own token."""
    stop = asyncio.Event()
    tasks = []
    if engine is not None:
        inference = InferenceService(
            engine, url=bus.url, token=service_token(state, "main"), embedder=embedder
        )
        tasks.append(asyncio.create_task(inference.run(stop)))
    hub = HubService(url=bus.url, token=hub_token(state), state=state)
    tasks.append(asyncio.create_task(hub.run(stop, metrics=("127.0.0.1", 0))))
    await hub.client.wait_connected(WAIT)
    if engine is not None:
        await eventually(lambda: "inference:main" in bus.router.clients, what="inference connected")
    try:
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)


async def test_a_token_without_the_grants_is_refused_every_method(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with services(bus, state):
        persona = await connect(token=state.persona_token("eve", create=True), kind="persona", name="eve")
        for method, params in METHODS.items():
            with pytest.raises(RpcError) as caught:
                await persona.call(method, params, to="cap:hub")
            assert caught.value.code == ErrorCode.FORBIDDEN, method


def test_the_hub_token_holds_exactly_what_the_service_calls(state: StateDir) -> None:
    entry = state.tokens().verify(hub_token(state))
    assert entry is not None
    assert entry.subject == "hub:main"
    assert set(entry.grants) == {"bus.*", "provide:hub", *HUB_GRANTS}
    assert entry.allows("inference.generate", "cap:inference")
    assert not entry.allows("memory.recall", "persona:mira")
    assert not entry.allows("persona.update", "cap:registry")
    text = (REPO / "systemd" / "personad-hub.service").read_text("utf-8")
    for grant in HUB_GRANTS:
        assert grant in text, grant


async def test_a_small_job_runs_through_the_bus_with_progress_output_and_metrics(
    bus: Bus, state: StateDir, connect: Any, hub_engine: AsyncEngine, hub_embedder: Embedder
) -> None:
    async with services(bus, state, hub_engine, hub_embedder) as hub:
        admin = await connect(name="admin")
        plan = await admin.call("hub.plan", SMALL_RUN, to="cap:hub")
        assert plan["total_slots"] >= 4
        notes: list[dict[str, Any]] = []

        async def seen(note: Any) -> None:
            notes.append(note.params)

        status = await admin.call(
            "hub.run",
            {"requirements": SMALL_RUN, "job_id": "small", "wait": True},
            to="cap:hub",
            deadline_ms=600_000,
            on_progress=seen,
        )
        assert status["state"] == "done", status["error"]
        assert status["kept"] == 4
        assert status["figures"]["made"] + status["figures"]["failed"] == plan["total_slots"]
        assert status["quality"]["input"] == status["figures"]["made"]
        assert notes
        assert notes[-1]["state"] == "done"
        assert all(n["job_id"] == "small" for n in notes)

        page = await admin.call("hub.personas", {"job_id": "small", "limit": 3}, to="cap:hub")
        assert page["total"] == 4
        assert len(page["personas"]) == 3
        assert page["next_offset"] == 3
        rest = await admin.call("hub.personas", {"job_id": "small", "offset": 3}, to="cap:hub")
        assert rest["next_offset"] is None
        ids = [p["id"] for p in page["personas"] + rest["personas"]]
        assert len(set(ids)) == 4
        assert (state.root / "hub" / "jobs" / "small" / "report" / "report.json").is_file()

        # The same job again with the same requirements is done already: nothing is redone.
        again = await admin.call("hub.run", {"requirements": SMALL_RUN, "job_id": "small"}, to="cap:hub")
        assert again["state"] == "done"
        # With other requirements, the id is refused rather than mixing two runs.
        with pytest.raises(RpcError) as caught:
            await admin.call(
                "hub.run", {"requirements": {**SMALL_RUN, "seed": 3}, "job_id": "small"}, to="cap:hub"
            )
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert caught.value.data["field"] == "job_id"

        metrics = await _get_metrics(hub)
        assert 'personad_hub_personas_made{job="small",state="done"}' in metrics
        assert 'personad_hub_kept{job="small",state="done"} 4' in metrics
        assert 'personad_hub_quality_coherence{job="small",state="done"}' in metrics


async def test_the_job_list_is_paged_newest_first_and_reports_stay_on_disk(
    bus: Bus, state: StateDir, connect: Any, hub_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven finished jobs on disk (the odd ones' job.json with their scores, as this service
    writes it; the even ones' without, as an older one did): listed a page at a time, newest
    first, without reports; one job is answered with its report, read from its folder; the
    service keeps only the scores; /metrics has series for the newest jobs only."""
    report = (await validate([], embed=hub_embedder.embed)).report
    requirements = Requirements.model_validate(SMALL_RUN).model_dump(mode="json")
    for i in range(7):
        folder = state.root / "hub" / "jobs" / f"old-{i}"
        (folder / "report").mkdir(parents=True)
        (folder / "report" / "report.json").write_text(report.model_dump_json())
        record = {"job_id": f"old-{i}", "requirements": requirements, "created_at": 1_000.0 + i}
        record |= {"state": "done", "error": None, "finished_at": 1_001.0 + i, "kept": 0}
        if i % 2:
            record["scores"] = asdict(Scores.of(report))
        (folder / "job.json").write_text(json.dumps(record))
    monkeypatch.setattr(hub_service, "METRICS_JOBS", 2)
    async with services(bus, state) as hub:
        admin = await connect(name="admin")
        first = await admin.call("hub.status", {"limit": 3}, to="cap:hub")
        assert ["old-6", "old-5", "old-4"] == [j["job_id"] for j in first["jobs"]]
        assert (7, 3) == (first["total"], first["next_offset"])
        rest = await admin.call("hub.status", {"offset": 3}, to="cap:hub")
        assert ["old-3", "old-2", "old-1", "old-0"] == [j["job_id"] for j in rest["jobs"]]
        assert (7, None) == (rest["total"], rest["next_offset"])
        assert all(j["quality"] is None for j in first["jobs"] + rest["jobs"])
        (one,) = (await admin.call("hub.status", {"job_id": "old-2"}, to="cap:hub"))["jobs"]
        assert report.model_dump(mode="json") == one["quality"]
        assert all(Scores.of(report) == job.scores for job in hub.jobs.values())
        metrics = await _get_metrics(hub)
        assert "personad_hub_jobs 7" in metrics
        series = {line.split('job="')[1].split('"')[0] for line in metrics.splitlines() if 'job="' in line}
        assert {"old-6", "old-5"} == series


async def _get_metrics(hub: HubService) -> str:
    port = await eventually(lambda: hub.metrics_port, what="metrics listening")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    assert body.startswith("HTTP/1.1 200")
    return body


async def test_validate_inline_removes_a_planted_copy_and_keeps_the_rest(
    bus: Bus, state: StateDir, connect: Any, hub_engine: AsyncEngine, hub_embedder: Embedder
) -> None:
    personas = [
        {"id": "a", "persona": "A retired lighthouse keeper in Maine who paints seabirds.", "path": "import"},
        {"id": "b", "persona": "A retired lighthouse keeper in Maine who paints seabirds!", "path": "import"},
        {
            "id": "c",
            "persona": "A Nairobi software engineer who coaches a youth football team.",
            "path": "import",
        },
    ]
    async with services(bus, state, hub_engine, hub_embedder):
        admin = await connect(name="admin")
        report = await admin.call(
            "hub.validate", {"personas": personas, "thresholds": {"judge_sample": 0}}, to="cap:hub"
        )
        assert report["input"] == 3
        assert report["kept"] == 2
        removed = report["duplicates_removed"]["removed"]
        assert [(r["id"], r["duplicate_of"]) for r in removed] == [("b", "a")]


async def test_what_cannot_be_done_is_refused_naming_the_field(
    bus: Bus, state: StateDir, connect: Any, tmp_path: Path
) -> None:
    async with services(bus, state):
        admin = await connect(name="admin")
        for params, field in (({"job_id": "nope"}, "job_id"),):
            with pytest.raises(RpcError) as caught:
                await admin.call("hub.status", params, to="cap:hub")
            assert caught.value.code == ErrorCode.INVALID_PARAMS
            assert caught.value.data["field"] == field
        # A corpus is named, never a path: a client cannot make the service read /etc/passwd.
        for corpus in ("/etc/passwd", "../secrets", "missing"):
            with pytest.raises(RpcError) as caught:
                await admin.call(
                    "hub.run",
                    {"requirements": {"count": 1, "paths": {"text": 1.0}, "corpus": corpus}},
                    to="cap:hub",
                )
            assert caught.value.code == ErrorCode.INVALID_PARAMS
            assert caught.value.data["field"] == "requirements.corpus"
        with pytest.raises(RpcError) as caught:
            await admin.call("hub.run", {"requirements": {"count": 1_000_000}}, to="cap:hub")
        assert caught.value.data["field"] == "requirements.count"
        with pytest.raises(RpcError) as caught:
            await admin.call("hub.validate", {"personas": [], "job_id": "x"}, to="cap:hub")
        assert caught.value.code == ErrorCode.INVALID_PARAMS


async def test_compose_writes_in_each_personas_voice_through_the_bus(
    bus: Bus, state: StateDir, connect: Any, hub_engine: AsyncEngine, hub_embedder: Embedder
) -> None:
    personas = [
        {
            "id": "p-1",
            "persona": "A beekeeper in Ljubljana who sells honey at the Saturday market.",
            "path": "import",
        },
        {
            "id": "p-2",
            "persona": "A night-shift taxi driver in Seoul who studies law by day.",
            "path": "import",
        },
    ]
    async with services(bus, state, hub_engine, hub_embedder):
        admin = await connect(name="admin")
        notes: list[Any] = []

        async def seen(note: Any) -> None:
            notes.append(note.params)

        result = await admin.call(
            "hub.compose",
            {"personas": personas, "kind": "instruction", "seed": 3},
            to="cap:hub",
            deadline_ms=300_000,
            on_progress=seen,
        )
        assert len(result["items"]) + result["failed"] == 2
        assert {item["persona_id"] for item in result["items"]} <= {"p-1", "p-2"}
        assert all(item["kind"] == "instruction" and item["text"] for item in result["items"])
        assert notes
        assert notes[-1]["total"] == 2


async def test_a_cancelled_job_keeps_its_work_and_resumes_and_a_restarted_service_resumes_by_itself(
    bus: Bus, state: StateDir, connect: Any, hub_engine: AsyncEngine, hub_embedder: Embedder
) -> None:
    run = {**SMALL_RUN, "count": 6, "seed": 5}
    async with services(bus, state, hub_engine, hub_embedder) as hub:
        admin = await connect(name="admin")
        watching = asyncio.create_task(
            admin.call("hub.run", {"requirements": run, "job_id": "stop-go", "wait": True}, to="cap:hub",
                       deadline_ms=600_000)
        )  # fmt: skip
        await eventually(
            lambda: "stop-go" in hub.jobs and hub.jobs["stop-go"].stats.done >= 2,
            timeout=WAIT * 8,
            what="two slots done",
        )
        cancelled = await admin.call("hub.cancel", {"job_id": "stop-go"}, to="cap:hub")
        assert cancelled["state"] == "cancelled"
        # The caller that waited gets the job's end as an answer, not an error.
        assert (await watching)["state"] == "cancelled"
        done_before = cancelled["figures"]["done"]

        resumed = await admin.call("hub.run", {"requirements": run, "job_id": "stop-go"}, to="cap:hub")
        assert resumed["state"] == "generating"
        await eventually(lambda: hub.jobs["stop-go"].stats.done >= done_before + 1, timeout=WAIT * 8,
                         what="the resumed job goes on")  # fmt: skip
        assert (
            hub.jobs["stop-go"].stats.resumed >= done_before
        )  # a line written as the cancel came counts too
    # The service stopped mid-job: the next one resumes it without being asked.
    async with services(bus, state, hub_engine, hub_embedder) as again:
        job = await eventually(lambda: again.jobs.get("stop-go"), what="the job loaded")
        await eventually(lambda: job.state == "done", timeout=WAIT * 16, what="the job finished")
        assert job.stats.resumed >= done_before + 1
        assert job.kept == 6
