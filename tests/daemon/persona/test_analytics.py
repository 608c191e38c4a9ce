"""persona.performance.record and persona.analytics through a real bus, a real persona and a real registry.

Histories with chosen times are written through the brain module
(``insert_records`` on the running persona's brain): the bus method takes no
time from callers, so the streak and trend cases cannot be built over the
bus. Everything is then read back over the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from daemon.brain.performance import DAY_S, Figures, NewRecord, TopicFigure, day_of, insert_records
from daemon.bus import Bus
from daemon.persona import analytics_rules as rules
from daemon.persona.analytics import RUNS_LOG, read_plugin_runs
from daemon.persona.cli_analytics import PLOT_DPI, PLOT_SIZE_IN, add_verbs, build_figure
from daemon.persona.daemon import PersonaDaemon
from daemon.registry.cli import registry_token
from daemon.registry.service import RegistryService
from daemon.registry.store import Registry
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.profile import PersonaStatus, Profile
from tests.conftest import WAIT
from tests.daemon.persona.running import running_persona


@pytest.fixture
async def personas(bus: Bus, state: StateDir) -> AsyncIterator[Callable[[str], Awaitable[PersonaDaemon]]]:
    """Factory: ``await start("ada")`` runs persona ``ada`` in-process on ``bus`` until the test ends."""
    async with contextlib.AsyncExitStack() as running:

        async def start(persona_id: str) -> PersonaDaemon:
            return await running.enter_async_context(running_persona(bus, state, persona_id))

        yield start


@pytest.fixture
async def registry(bus: Bus, state: StateDir) -> AsyncIterator[Registry]:
    """The registry serving cap:registry on ``bus``, holding the profile the personas read."""
    reg = await Registry.open(state.root, environ={})
    service = RegistryService(reg, url=bus.url, token=registry_token(state), state_root=state.root)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await service.client.wait_connected(WAIT)
    try:
        yield reg
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
        await reg.close()


def _series(scores: list[float], *, end: float, every_s: float = DAY_S / 2) -> list[NewRecord]:
    """One record per session, ``every_s`` apart, the last at ``end``."""
    n = len(scores)
    return [
        NewRecord(
            session_id=f"s{i}",
            task="code review" if i % 2 else "Refactoring",
            score=score,
            success=True,
            duration_s=600,
            context={"tags": ["python"]},
            recorded_at=end - (n - 1 - i) * every_s,
        )
        for i, score in enumerate(scores)
    ]


async def _write(daemon: PersonaDaemon, records: list[NewRecord]) -> None:
    assert daemon.brain is not None
    await daemon.brain.write(insert_records, records)


async def test_record_over_the_bus_then_analytics(personas, connect, registry: Registry) -> None:
    """Records sent over the bus are counted; name, role and status come from the registry's profile."""
    await registry.create(
        Profile(id="ada", name="Ada Lovelace", role="code reviewer", status=PersonaStatus.ACTIVE),
        actor="test",
    )
    await personas("ada")
    admin = await connect()
    sent = [
        ("s1", "Code  review", 90, True, 1800.0, {"tags": ["Python", "security"]}),
        ("s1", "code review", 70, False, 900.0, None),
        ("s2", "write tests", 80, True, 1800.0, {"tags": ["python"]}),
    ]
    ids = []
    for session_id, task, score, success, duration, context in sent:
        answer = await admin.call(
            "persona.performance.record",
            {
                "session_id": session_id,
                "task": task,
                "score": score,
                "success": success,
                "duration_s": duration,
                "user_feedback": "fine",
                "context": context,
            },
            to="persona:ada",
        )
        assert answer["recorded_at"] == pytest.approx(time.time(), abs=60)
        ids.append(answer["id"])
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    r = await admin.call("persona.analytics", {"window": 7}, to="persona:ada")
    assert ("ada", "Ada Lovelace", "code reviewer", "active") == (
        r["persona_id"],
        r["persona_name"],
        r["role"],
        r["status"],
    )
    assert (2, 3, 80.0, 0.6667) == (
        r["total_sessions"],
        r["total_records"],
        r["average_score"],
        r["success_rate"],
    )
    g = r["growth_stats"]
    # Both sessions had a success; "Code  review" and "code review" are one task.
    assert (2, 2, 1, 1, 1.25) == (
        g["sessions_completed"],
        g["unique_tasks"],
        g["repeat_tasks"],
        g["usage_streak"],
        g["total_usage_time_h"],
    )
    topics = {t["topic"]: (t["records"], t["score"]) for t in r["top_topics"]}
    assert {
        "code review": (2, 80.0),
        "python": (2, 85.0),
        "write tests": (1, 80.0),
        "security": (1, 90.0),
    } == topics
    assert [t["topic"] for t in r["top_topics"]][:2] == ["python", "code review"]  # most records, then score
    assert 7 == len(r["performance_trend"])
    assert 3 == sum(p["records"] for p in r["performance_trend"])
    assert (0, None, 0.0) == (r["active_plugins"], r["plugin_performance_impact"], r["knowledge_coverage"])


async def test_declining_series_grows_negatively_and_ranks_lower(personas, connect) -> None:
    """The same scores, rising for one persona and falling for another: growth and tier tell them apart."""
    rising = [70 + 30 * i / 23 for i in range(24)]
    ada, bob = await personas("ada"), await personas("bob")
    now = time.time()
    await _write(ada, _series(rising, end=now))
    await _write(bob, _series(rising[::-1], end=now))
    admin = await connect()
    up = await admin.call("persona.analytics", {"window": 30}, to="persona:ada")
    down = await admin.call("persona.analytics", {"window": 30}, to="persona:bob")
    assert up["average_score"] == down["average_score"] == 85.0
    assert up["growth_stats"]["growth_rate"] > 0.1
    assert down["growth_stats"]["growth_rate"] < rules.DECLINE
    assert ("expert", "advanced") == (up["tier"], down["tier"])
    assert "growth_rate" in [rec["figure"] for rec in down["recommendations"]]
    assert "growth_rate" not in [rec["figure"] for rec in up["recommendations"]]
    regain = [o for o in down["growth_opportunities"] if o["figure"] == "growth_rate"]
    assert len(regain) == 1
    assert "'expert'" in regain[0]["message"]
    # The trend is the data: later buckets of the declining persona score lower.
    scored = [p["average_score"] for p in down["performance_trend"] if p["records"]]
    assert scored == sorted(scored, reverse=True)
    assert len(scored) == len({day_of(r.recorded_at or 0) for r in _series(rising, end=now)})


async def test_a_missed_day_resets_the_streak(personas, connect) -> None:
    """Consecutive days count back from the latest use; one missed day ends the run."""
    ada, bob, cyd = await personas("ada"), await personas("bob"), await personas("cyd")
    now = time.time()  # d days before now is on the d-th UTC day before today

    def on_days(days: list[int]) -> list[NewRecord]:
        return [NewRecord(f"s{d}", "triage", 75, True, 60, recorded_at=now - d * DAY_S) for d in days]

    await _write(ada, on_days([0, 1, 2, 3, 4]))
    await _write(bob, on_days([0, 1, 3, 4]))  # day 2 missed
    await _write(cyd, on_days([3, 4, 5]))  # nothing today or yesterday
    admin = await connect()
    streaks = [
        (await admin.call("persona.analytics", {}, to=f"persona:{p}"))["growth_stats"]["usage_streak"]
        for p in ("ada", "bob", "cyd")
    ]
    assert [5, 2, 0] == streaks
    cyd_recs = (await admin.call("persona.analytics", {}, to="persona:cyd"))["recommendations"]
    assert "usage_streak" in [rec["figure"] for rec in cyd_recs]


async def test_window_and_empty_history(personas, connect) -> None:
    """No records: figures are null or zero, the tier is novice, and the one recommendation says why."""
    ada = await personas("ada")
    admin = await connect()
    r = await admin.call("persona.analytics", {"window": 3}, to="persona:ada")
    assert (0, None, None, "novice") == (
        r["total_records"],
        r["average_score"],
        r["growth_stats"]["growth_rate"],
        r["tier"],
    )
    assert ["total_records"] == [rec["figure"] for rec in r["recommendations"]]
    assert (r["persona_name"], r["role"], r["status"]) == ("ada", None, None)  # no registry on this bus
    # A record older than the window is outside it, but still part of the streak's history.
    await _write(ada, [NewRecord("old", "triage", 50, True, 1, recorded_at=time.time() - 10 * DAY_S)])
    r = await admin.call("persona.analytics", {"window": 3}, to="persona:ada")
    assert 0 == r["total_records"]
    r = await admin.call("persona.analytics", {"window": 11}, to="persona:ada")
    assert (1, 11) == (r["total_records"], len(r["performance_trend"]))
    # Past 30 days the points group days (13 at a time for a year) and still cover the window exactly.
    trend = (await admin.call("persona.analytics", {"window": 365}, to="persona:ada"))["performance_trend"]
    today = day_of(time.time())
    assert len(trend) == 29
    assert (trend[0]["start"], trend[-1]["end"]) == ((today - 364) * DAY_S, (today + 1) * DAY_S)
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(trend))
    assert 1 == sum(p["records"] for p in trend)


async def test_knowledge_coverage_and_low_figures(personas, connect) -> None:
    """Coverage is the share of top topics the knowledge base matches; low figures each recommend."""
    ada = await personas("ada")
    assert ada.brain is not None

    def add_knowledge(db) -> None:
        db.execute(
            "INSERT INTO knowledge (content, tags, relevance, created_at, updated_at) "
            "VALUES ('How to review code: read the diff twice', '[]', 0.5, 0, 0)"
        )

    await ada.brain.write(add_knowledge)
    now = time.time()
    records = [
        NewRecord(f"s{i}", "code review", 40, i % 3 == 0, 60, recorded_at=now - i * 60) for i in range(6)
    ] + [NewRecord(f"t{i}", "deployment", 45, False, 60, recorded_at=now - i * 60) for i in range(3)]
    await _write(ada, records)
    admin = await connect()
    r = await admin.call("persona.analytics", {}, to="persona:ada")
    assert {"code review": True, "deployment": False} == {t["topic"]: t["knowledge"] for t in r["top_topics"]}
    assert 0.5 == r["knowledge_coverage"]
    by_figure = {rec["figure"]: rec for rec in r["recommendations"]}
    assert {"success_rate", "average_score", "knowledge_coverage"} <= set(by_figure)
    assert "'deployment'" in by_figure["knowledge_coverage"]["message"]
    # Most failures: deployment fails 3 of 3, code review 4 of 6 -> code review has more failures.
    assert "'code review' (4 of 6)" in by_figure["success_rate"]["message"]
    assert by_figure["average_score"]["value"] == pytest.approx(41.67, abs=0.01)
    next_tier = {o["figure"]: o["target"] for o in r["growth_opportunities"]}
    assert {"average_score": 55.0, "success_rate": 0.5} == {
        k: next_tier[k] for k in ("average_score", "success_rate")
    }


async def test_plugin_runs_fill_plugin_figures(personas, connect, state: StateDir) -> None:
    """Installed plugin folders are counted; runs.jsonl gives per-plugin impact; bad lines are skipped."""
    ada = await personas("ada")
    plugins = ada.session_dir.plugins
    (plugins / "summarise").mkdir()
    (plugins / "report").mkdir()
    lines = [
        {"plugin_id": "summarise", "ok": True, "duration_s": 1.5},
        {"plugin_id": "summarise", "ok": False, "duration_s": 2.5, "stopped_by": "memory", "calls": 3},
        {"plugin_id": "summarise", "ok": False, "duration_s": 0.5},
        {"plugin_id": "report", "ok": True},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\nnot json\n[1]\n{"plugin_id": 3, "ok": true}\n'
    (plugins / RUNS_LOG).write_text(text)
    admin = await connect()
    r = await admin.call("persona.analytics", {}, to="persona:ada")
    assert 2 == r["active_plugins"]
    assert [
        {
            "plugin_id": "report",
            "runs": 1,
            "failures": 0,
            "success_rate": 1.0,
            "mean_duration_s": None,
            "stopped_by": {},
        },
        {
            "plugin_id": "summarise",
            "runs": 3,
            "failures": 2,
            "success_rate": 0.3333,
            "mean_duration_s": 1.5,
            "stopped_by": {"memory": 1},
        },
    ] == r["plugin_performance_impact"]
    flagged = [rec for rec in r["recommendations"] if rec["figure"] == "plugin_performance_impact"]
    assert ["summarise"] == [rec["value"] for rec in flagged]
    assert "most often stopped by memory" in flagged[0]["message"]
    # A run appended later, and a plugin removed, show on the next call.
    with (plugins / RUNS_LOG).open("a") as f:
        f.write(
            json.dumps({"plugin_id": "report", "ok": False, "duration_s": 3.0, "stopped_by": "wall_clock"})
            + "\n"
        )
    (plugins / "report").rmdir()
    r = await admin.call("persona.analytics", {}, to="persona:ada")
    assert 1 == r["active_plugins"]
    report = r["plugin_performance_impact"][0]
    assert (2, 1, {"wall_clock": 1}) == (report["runs"], report["failures"], report["stopped_by"])
    assert (0, None) == read_plugin_runs(state.root / "nowhere")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"score": 101}, "score"),
        ({"score": "90"}, "score"),
        ({"success": 1}, "success"),
        ({"duration_s": -1}, "duration_s"),
        ({"task": "   "}, "task"),
        ({"session_id": ""}, "session_id"),
        ({"context": ["not", "an", "object"]}, "context"),
        ({"when": 0}, "when"),
    ],
)
async def test_bad_record_params_name_the_field(personas, connect, params, field) -> None:
    """Each bad member is INVALID_PARAMS naming it, and nothing is stored."""
    await personas("ada")
    admin = await connect()
    good = {"session_id": "s1", "task": "triage", "score": 50, "success": True, "duration_s": 1}
    with pytest.raises(RpcError) as info:
        await admin.call("persona.performance.record", {**good, **params}, to="persona:ada")
    assert ErrorCode.INVALID_PARAMS == info.value.code
    assert info.value.message.startswith(f"invalid params: {field}")
    r = await admin.call("persona.analytics", {}, to="persona:ada")
    assert 0 == r["total_records"]


@pytest.mark.parametrize("window", [0, 3651, 1.5, "7"])
async def test_bad_window_names_the_field(personas, connect, window) -> None:
    await personas("ada")
    admin = await connect()
    with pytest.raises(RpcError) as info:
        await admin.call("persona.analytics", {"window": window}, to="persona:ada")
    assert ErrorCode.INVALID_PARAMS == info.value.code
    assert info.value.message.startswith("invalid params: window")


async def test_another_personas_token_is_refused(personas, connect, state: StateDir) -> None:
    """Bob's own token has no grant for Ada's records or analytics; the bus refuses it."""
    await personas("ada")
    bob = await connect(kind="persona", name="bob", token=state.persona_token("bob", create=True))
    record = {"session_id": "s1", "task": "triage", "score": 50, "success": True, "duration_s": 1}
    for method, params in (("persona.performance.record", record), ("persona.analytics", {})):
        with pytest.raises(RpcError) as info:
            await bob.call(method, params, to="persona:ada")
        assert ErrorCode.FORBIDDEN == info.value.code
    admin = await connect()
    assert 0 == (await admin.call("persona.analytics", {}, to="persona:ada"))["total_records"]


async def test_cli_prints_and_plots_the_series(personas, bus: Bus, state: StateDir, tmp_path, capsys) -> None:
    """``personad analytics ID --plot F.png`` writes a PNG of the stated size whose lines are the trend."""
    ada = await personas("ada")
    now = time.time()
    await _write(ada, _series([60, 70, 80, 90], end=now, every_s=DAY_S))
    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb")
    handlers = add_verbs(lambda name, help: verbs.add_parser(name, help=help))
    png = tmp_path / "ada.png"
    args = parser.parse_args(["analytics", "ada", "--window", "7", "--plot", str(png), "--json"])
    # The verb runs its own event loop, as under `personad`: off this one.
    status = await asyncio.to_thread(handlers["analytics"], args, state, bus.url)
    assert 0 == status
    result = json.loads(capsys.readouterr().out)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (int(PLOT_SIZE_IN[0] * PLOT_DPI), int(PLOT_SIZE_IN[1] * PLOT_DPI))
    fig = build_figure(result)
    score_ax, success_ax, topics_ax = fig.axes
    plotted = [y for y in score_ax.lines[0].get_ydata() if y == y]  # NaN: an empty day
    assert [60.0, 70.0, 80.0, 90.0] == plotted
    assert [100.0] * 4 == [y for y in success_ax.lines[0].get_ydata() if y == y]
    assert [t["score"] for t in result["top_topics"]] == [bar.get_width() for bar in topics_ax.patches]
    # The readable form names the tier and each recommendation's figure.
    args = parser.parse_args(["analytics", "ada"])
    assert 0 == await asyncio.to_thread(handlers["analytics"], args, state, bus.url)
    out = capsys.readouterr().out
    assert "tier " in out
    assert "4 records" in out
    # A non-PNG name is refused before anything is called.
    args = parser.parse_args(["analytics", "ada", "--plot", str(tmp_path / "x.jpg")])
    assert 2 == handlers["analytics"](args, state, bus.url)
    # An unknown persona: the bus's error, exit 1.
    args = parser.parse_args(["analytics", "nobody"])
    assert 1 == await asyncio.to_thread(handlers["analytics"], args, state, bus.url)


async def test_rollup_follows_new_and_removed_records(personas, connect) -> None:
    """Records added after a first analytics call are counted; rows removed from the table are too."""
    ada = await personas("ada")
    assert ada.brain is not None
    admin = await connect()
    now = time.time()
    await _write(ada, [NewRecord(f"s{i}", "triage", 60 + i, True, 10, recorded_at=now - i) for i in range(5)])
    first = await admin.call("persona.analytics", {}, to="persona:ada")
    assert (5, 62.0) == (first["total_records"], first["average_score"])
    record = {"session_id": "late", "task": "triage", "score": 100, "success": False, "duration_s": 1}
    await admin.call("persona.performance.record", record, to="persona:ada")
    second = await admin.call("persona.analytics", {}, to="persona:ada")
    assert (6, 68.33, 6) == (second["total_records"], second["average_score"], second["total_sessions"])

    def remove_the_best(db) -> None:
        db.execute("DELETE FROM performance_records WHERE score >= 64")

    await ada.brain.write(remove_the_best)
    third = await admin.call("persona.analytics", {}, to="persona:ada")
    assert (4, 61.5, 1.0) == (third["total_records"], third["average_score"], third["success_rate"])


def _figures(**changes) -> Figures:
    base = {
        "window_days": 30,
        "records": 40,
        "total_sessions": 25,
        "sessions_completed": 25,
        "unique_tasks": 3,
        "repeat_tasks": 3,
        "usage_streak": 3,
        "total_usage_s": 3600.0,
        "average_score": 88.0,
        "success_rate": 0.95,
        "early_score": 88.0,
        "late_score": 88.0,
        "trend": [],
        "topics": [],
    }
    return Figures(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "earned", "tier"),
    [
        ({}, "expert", "expert"),
        ({"total_sessions": 19}, "advanced", "advanced"),
        ({"success_rate": 0.89}, "advanced", "advanced"),
        ({"average_score": 84.9}, "advanced", "advanced"),
        ({"average_score": 60.0, "success_rate": 0.6}, "proficient", "proficient"),
        ({"early_score": 100.0, "late_score": 90.0}, "expert", "advanced"),  # -10 %: a decline
        ({"early_score": 100.0, "late_score": 90.1}, "expert", "expert"),
        ({"average_score": 40.0, "early_score": 50.0, "late_score": 30.0}, "novice", "novice"),
        ({"records": 0, "average_score": None, "success_rate": None}, "novice", "novice"),
    ],
)
def test_tier_thresholds(changes, earned, tier) -> None:
    """Each tier's three minimums, and the one-tier demotion at a growth rate of -10 % or worse."""
    f = _figures(**changes)
    assert (earned, tier) == (rules.earned_tier(f), rules.tier(f))


def test_growth_rate_formula() -> None:
    assert rules.growth_rate(_figures(early_score=80.0, late_score=60.0)) == -0.25
    assert (
        rules.growth_rate(_figures(early_score=0.0, late_score=5.0)) == 5.0
    )  # the denominator is at least 1
    assert rules.growth_rate(_figures(early_score=None, late_score=None)) is None


def test_next_tier_opportunities_name_the_missing_figures() -> None:
    """An advanced persona short of expert on sessions only is told exactly that; strengths are named."""
    strong = TopicFigure("code review", 12, 92.0, 0, knowledge_hit=False)
    opps = rules.opportunities(_figures(total_sessions=12, topics=[strong]))
    assert [("total_sessions", 12.0, 20.0), ("top_topics", "code review", None)] == [
        (o.figure, o.value, o.target) for o in opps
    ]
    assert "add what you learn to the knowledge base" in opps[1].message
    assert [] == [
        o for o in rules.opportunities(_figures()) if o.figure != "top_topics"
    ]  # expert: no next tier


def test_weak_topic_and_coverage_recommendations() -> None:
    weak = TopicFigure("deployment", 4, 60.0, 1, knowledge_hit=False)
    fine = TopicFigure("code review", 10, 90.0, 0, knowledge_hit=True)
    recs = rules.recommendations(_figures(topics=[fine, weak]), 30, 0.5, None)
    by_figure = {r.figure: r for r in recs}
    assert {"top_topics", "knowledge_coverage"} == set(by_figure)
    assert ("deployment", 73.0) == (by_figure["top_topics"].value, by_figure["top_topics"].threshold)
    assert "'deployment'" in by_figure["knowledge_coverage"].message
