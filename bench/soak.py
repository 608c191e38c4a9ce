#!/usr/bin/env python
"""The whole system under load, faults and hostile clients at once, held to a ledger.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 1000] [--rate 10000]
                                   [--repeats 3] [--only WORDS] [--report DIR] [--ci]

Starts the real embedded default (``personad up``: bus, registry, inference
on SmolLM2, headless Chromium, and three personas of its own, one of them
on a small ext4 filesystem on a loop device) in a throwaway state dir, beside
a second bus node of the same cluster, then for ``--minutes``:

- **load** (bench/soak_load.py): ``--clients`` real BusClients (callers,
  services, subscribers, room members, intruders without grants, one-shot
  CLI callers), a mixed workload paced at ``--rate`` requests/s in all, each
  call timed and any call unanswered past its deadline counted as hung;
- **faults** (bench/soak_faults.py), each kind ``--repeats`` times at random
  moments: kill -9 of the bus, of a persona mid-write, of the registry
  mid-write, of inference mid-generation and mid-training, of Chromium
  mid-request, of the second bus node; a full disk and a slow disk under a
  persona; a client that stops reading; the wall clock stepped. After each:
  wait for every part to answer again, by itself, and check the ledger (the
  callers held meanwhile, see Load.pause); ``--only`` picks some kinds;
- **the ledger** (bench/soak_ledger.py): every write sent, and what it was
  answered, read back from the system: nothing acknowledged lost, nothing
  duplicated, nothing torn, nothing written that was refused; bundle imports
  and PersonaHub jobs (a small ``hub.run`` every 45 s, registered when done)
  too (bench/soak_artifacts.py), and at the end the soak waits for every
  acknowledged hub job to finish;
- **RSS** of every process every second, judged flat after warm-up.

``--report DIR`` writes report.json, latency.png, rss.png, errors.png and up.log (all
that ``personad up`` and its children printed).
``--ci`` is the bounded run the tests use: 100 clients, 400 requests/s,
every fault once, about three minutes in all. The last line is
``soak.py: ok`` or ``soak.py: FAIL`` (the exit code says the same): FAIL on
any ledger violation, hung request, client exception, undocumented error
code, fault not recovered from, or RSS growing without bound.

(About 535 lines, one file: the run's order (start, load, faults with a check after
each, the last check, the report) and its judgement read top to bottom here; the parts
it drives are in the soak_* modules beside it.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # daemon, protocol
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the soak_* modules beside this one

from soak_artifacts import HubJobs, ImportCheck
from soak_attacks import Attacks
from soak_faults import Fault, Faults
from soak_ledger import Ledger, Violation
from soak_load import Load
from soak_report import charts, percentiles, rss_trends
from soak_system import DISK_PERSONA, Nats, System, node_b

from daemon.client import BusClient
from daemon.errors import AuthError
from protocol import RpcError

PERSONAS = ["soak-a", "soak-b", DISK_PERSONA]


async def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    t_start = time.monotonic()
    nats, second, extra = Nats(root), None, []
    if args.federation and Nats.binary() is None:
        print("soak: no nats-server (scripts/system-deps test installs it): one bus node only", flush=True)
    elif args.federation:
        # A cluster of two: this machine's part (node soak-b: a bus node only) first, so
        # that the first node's personas and services have it as their --peer.
        second = node_b(root, nats.start())
        print(f"soak: starting node soak-b in {second.root} …", flush=True)
        second.start()
        extra = ["--nats", nats.url, "--node", "soak-a", "--peer", second.url]
    system = System(root, PERSONAS, disk_mib=args.disk_mib, extra_args=extra, ecosystem=args.ecosystem)
    print(f"soak: starting personad up in {root} …", flush=True)
    system.start()  # blocking, before anything else runs (see System.start)
    print(f"soak: up in {time.monotonic() - t_start:.0f} s on {system.url}", flush=True)
    intruder = system.state.issue_token(
        name="soak-intruder", role="observer", subject="cli:soak-intruder-*"
    ).token
    ledger = Ledger()
    control = BusClient(
        system.url, token=system.admin_token, kind="cli", name="soak-control", reconnect=True, backoff_max=1.0
    )
    await control.start()
    await control.wait_connected(30)
    ledger.extra_checks.append(ImportCheck(ledger, control, system.state.root))
    hub = HubJobs(ledger, control, every_s=20.0 if args.ci else 45.0) if args.ecosystem else None
    if hub is not None:
        ledger.extra_checks.append(lambda stored, started, full: hub.check(started, final=full))
    remote = None
    if second is not None:
        # The first node's tokens reach the second through the cluster's bucket, within a
        # second or so: the client tries until they have.
        remote = await _connect_when_known(second.url, system.admin_token, "soak-remote")
        await (await _connect_when_known(second.url, intruder, "soak-intruder-probe")).close()
    load = Load(
        system.url,
        system.admin_token,
        intruder,
        PERSONAS,
        ledger,
        clients=args.clients,
        rate=args.rate,
        other_url=second.url if second is not None else "",
    )
    rss: list[tuple[float, dict[str, tuple[float, tuple[int, ...]]]]] = []
    faults_done: list[Fault] = []
    checks: list[dict[str, Any]] = []
    all_violations: list[Violation] = []
    me = psutil.Process()
    try:
        print(f"soak: connecting {args.clients} clients …", flush=True)
        # Time 0 is before the clients connect: their joins and subscriptions are on the chart too.
        load.stats.t0 = t0 = time.monotonic()
        for part in (system, second):
            if part is not None:
                await asyncio.to_thread(part.mark_cpu)
        my_cpu_base = sum(me.cpu_times()[:2])
        await load.start()
        faults = Faults(
            system,
            load,
            control,
            PERSONAS,
            t0,
            clock_jump_s=args.clock_jump,
            node_b=second,
            remote=remote,
            ecosystem=args.ecosystem,
            hub=hub,
        )
        hub_task = asyncio.create_task(hub.run(load._timed, load._go)) if hub is not None else None

        async def sample() -> None:
            while True:
                roles = await asyncio.to_thread(system.rss_by_role)
                if second is not None:
                    b = await asyncio.to_thread(second.rss_by_role)
                    roles.update({f"node soak-b {role}": v for role, v in b.items()})
                roles["load generator"] = (me.memory_info().rss / 2**20, (me.pid,))
                rss.append((time.monotonic() - t0, roles))
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample())
        attacks = Attacks(system.url, system.admin_token)
        attacking = asyncio.create_task(attacks.run())
        catalogue = faults.catalogue()
        if args.only:
            # Some kinds of fault only, to reproduce a finding without the others around it.
            catalogue = {k: v for k, v in catalogue.items() if any(o in k for o in args.only)}
        plan = [kind for kind in catalogue for _ in range(args.repeats)]
        rng = random.Random(args.seed)
        rng.shuffle(plan)
        duration = args.minutes * 60
        # Faults spread over the run: a random moment in each slot, after a quiet warm-up.
        warmup = min(30.0, duration * 0.15)
        slot = (duration - warmup) / max(1, len(plan))
        for i, kind in enumerate(plan):
            when = warmup + slot * i + rng.uniform(0, slot * 0.5)
            await _until(t0 + when)
            fault = Fault(kind, round(time.monotonic() - t0, 1))
            print(f"soak: {fault.at:7.1f} s  {kind} …", flush=True)
            try:
                await catalogue[kind](fault)
                fault.recovered_s = round(await faults.recover(), 1)
            except Exception as exc:  # a fault that did not end well is the soak's finding
                fault.error = fault.error or f"{type(exc).__name__}: {exc}"
            checked = time.monotonic()
            load.pause()  # the check reads with the callers held (Load.pause says why)
            try:
                violations = await ledger.check(control, PERSONAS)
            except RpcError as exc:
                # A part that does not answer the check's reads for minutes: the run's finding,
                # reported with everything measured so far, not a crash that loses them.
                fault.error = f"the ledger check after it could not read: {exc.message}"
                faults_done.append(fault)
                print(f"soak: {time.monotonic() - t0:7.1f} s  {kind}: ERROR {fault.error}", flush=True)
                break
            finally:
                load.resume()
            fault.violations = len(violations)
            for v in violations[:10]:  # what they are, as soon as they are found
                print(f"soak: VIOLATION {v.what} {v.kind} on {v.target} {v.nonce}: {v.detail}", flush=True)
            all_violations += violations
            checks.append(
                {
                    "after": kind,
                    "at": round(time.monotonic() - t0, 1),
                    "took_s": round(time.monotonic() - checked, 1),
                    "violations": len(violations),
                    "ledger": ledger.counts(),
                }
            )
            faults_done.append(fault)
            print(
                f"soak: {time.monotonic() - t0:7.1f} s  {kind}: {fault.detail}; in flight {fault.in_flight}; "
                f"back in {fault.recovered_s} s; ledger {len(violations)} violations"
                + (f"; ERROR {fault.error}" if fault.error else ""),
                flush=True,
            )
        await _until(t0 + duration)
        seconds = time.monotonic() - t0
        attacks.running = False
        if hub_task is not None:
            hub_task.cancel()
        await load.stop()
        attacking.cancel()
        hub_wait, hub_states = 0.0, {}
        if hub is not None:  # every job it acknowledged must end by itself: wait for them
            print("soak: waiting for the hub's jobs to finish …", flush=True)
            hub_wait = await hub.finish(300.0, load._timed)
            hub_states = await hub.listed()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attacking
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        checked = time.monotonic()
        try:
            final = await ledger.check(control, PERSONAS, full=True)
        except RpcError as exc:
            final = []
            failed_check = Fault("the final ledger check", round(time.monotonic() - t0, 1))
            failed_check.error = f"could not read: {exc.message}"
            faults_done.append(failed_check)
        all_violations += final
        checks.append(
            {
                "after": "the end",
                "at": round(seconds, 1),
                "took_s": round(time.monotonic() - checked, 1),
                "violations": len(final),
                "ledger": ledger.counts(),
            }
        )
        up_alive = all(s.up is not None and s.up.poll() is None for s in (system, second) if s is not None)
    finally:
        with contextlib.suppress(Exception):
            await load.stop()
        await control.close()
        if remote is not None:
            await remote.close()
        await asyncio.to_thread(system.stop)
        if second is not None:
            await asyncio.to_thread(second.stop)
        nats.stop()
        if args.report:  # everything they printed, even when the soak itself failed
            await asyncio.to_thread(write_logs, Path(args.report), system, second)

    stats = load.stats
    total = stats.total()
    warm = min(60.0, seconds * 0.25)
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "report"},
        "load": {
            "seconds": round(seconds, 1),
            "clients": args.clients,
            "requests": total,
            "rate_asked": args.rate,
            # Over the time the callers ran: they are held while the ledger is checked.
            "rate_reached": round(total / max(1.0, seconds - load.paused_s), 1),
            "paused_for_checks_s": round(load.paused_s, 1),
            "events_received": stats.events_received,
            "room_messages_received": stats.room_messages_received,
            "served_by_soak_services": stats.served_by_services,
        },
        "latency": {m: percentiles(v) for m, v in sorted(stats.latencies.items())},
        "errors": {f"{m} -> {c}": n for (m, c), n in sorted(stats.errors.items())},
        "hung": [{"at": round(t, 1), "method": m} for t, m in stats.hung],
        "client_exceptions": dict(stats.crashes),
        # Writes retried with their idempotency key, and those answered as replays.
        "retried": {"sent_again": dict(stats.retried), "replayed": dict(stats.replayed)},
        "attacks": {"outcomes": dict(attacks.outcomes), "findings": attacks.findings},
        "faults": [f.as_dict() for f in faults_done],
        "hub_jobs": {
            "started": len(hub.jobs),
            "registered": len(hub.registered),
            "resumed_by_the_soak": hub.resumed,
            "stopped_before_the_end": hub.failures,
            "states_at_end": dict(Counter(j["state"] for j in hub_states.values())),
            "problems": hub.problems,
            "waited_at_end_s": round(hub_wait, 1),
        }
        if hub is not None
        else None,
        "faults_skipped": faults.skipped,
        "ledger": {
            "entries": ledger.counts(),
            "by_kind": ledger.by_kind(),
            "checks": checks,
            "violations": [v.as_dict() for v in all_violations[:200]],
            "violation_count": len(all_violations),
        },
        # Killing either bus node moves its clients to the other, for good: both nodes' levels change.
        "rss": rss_trends(
            rss,
            warm,
            {
                role: [f.at for f in faults_done if f.kind in ("kill -9 bus", "kill -9 federated bus node")]
                for role in ("bus", "node soak-b bus")
            },
        ),
        # Where the machine's cores went: the ceiling on the rate, when it is below what was asked.
        "cpu_cores_used": _cores_used(system, second, me, my_cpu_base, seconds),
        "cpu_cores": psutil.cpu_count(),
        "supervisor_alive_at_end": up_alive,
        "cluster": f"two bus nodes over NATS ({system.url}, {second.url})" if second else "one bus node",
        "other_processes": sorted(system.others),
    }
    report["failures"] = _judge(report)
    if args.report:
        # Drawn here, off the loop's critical path: everything is stopped by now.
        await asyncio.to_thread(write_report, Path(args.report), report, stats, rss)
    return report


def _cores_used(
    system: System, second: System | None, me: psutil.Process, base: float, seconds: float
) -> dict[str, float]:
    """Average cores each role kept busy while the load ran (CPU seconds / wall seconds)."""
    used = system.cpu_by_role()
    if second is not None:
        used |= {f"node soak-b {role}": s for role, s in second.cpu_by_role().items()}
    times = me.cpu_times()
    used["load generator"] = times.user + times.system - base
    return {role: round(s / seconds, 3) for role, s in sorted(used.items(), key=lambda kv: -kv[1])}


async def _connect_when_known(url: str, token: str, name: str, timeout: float = 60.0) -> BusClient:
    """A control client on the second node, once the first node's tokens have reached it
    (through the cluster's key-value bucket, on the first node's next sweep)."""
    deadline = time.monotonic() + timeout
    while True:
        client = BusClient(url, token=token, kind="cli", name=name, reconnect=True, backoff_max=1.0)
        try:
            await client.start()
            await client.wait_connected(30)
            return client
        except AuthError:
            await client.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def write_logs(out: Path, system: System, second: System | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "up.log").write_text("".join(system.output))
    if second is not None:
        (out / "node-b.log").write_text("".join(second.output))


def write_report(out: Path, report: dict[str, Any], stats: Any, rss: list[Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    written = charts(report, stats, rss, out)
    print(f"soak: report in {out}: report.json, {', '.join(written)}")


def _judge(report: dict[str, Any]) -> list[str]:
    failures = []
    if report["ledger"]["violation_count"]:
        failures.append(f"{report['ledger']['violation_count']} ledger violations")
    if report["hung"]:
        failures.append(f"{len(report['hung'])} hung requests")
    if report["client_exceptions"]:
        failures.append(f"client exceptions: {report['client_exceptions']}")
    odd = {k: n for k, n in report["errors"].items() if "UNDOCUMENTED" in k}
    if odd:
        failures.append(f"undocumented error codes: {odd}")
    # An internal error without a reason is a handler that failed where it should have said why.
    internal = {k: n for k, n in report["errors"].items() if k.endswith("-> INTERNAL_ERROR")}
    if internal:
        failures.append(f"internal errors without a reason: {internal}")
    for fault in report["faults"]:
        if fault["error"] or fault["recovered_s"] is None:
            failures.append(f"{fault['kind']} at {fault['at']} s: {fault['error'] or 'not recovered'}")
        if any(o.startswith("HUNG") for o in fault["in_flight"]):
            failures.append(f"{fault['kind']} at {fault['at']} s: a request in flight hung")
    if report["hub_jobs"] and report["hub_jobs"]["problems"]:
        failures.append(f"the hub jobs' loop failed: {report['hub_jobs']['problems'][:5]}")
    if report["attacks"]["findings"]:
        failures.append(f"attacks the bus did not end: {report['attacks']['findings']}")
    # The load generator is not under test, and it keeps the whole ledger in memory by design.
    grown = [role for role, r in report["rss"].items() if r["unbounded"] and role != "load generator"]
    if grown:
        failures.append(f"RSS grows without bound: {grown}")
    if not report["supervisor_alive_at_end"]:
        failures.append("personad up died")
    return failures


async def _until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def print_report(report: dict[str, Any]) -> None:
    load = report["load"]
    print(
        f"\nrequests {load['requests']} in {load['seconds']} s: {load['rate_reached']}/s "
        f"(asked {load['rate_asked']}/s; callers held {load['paused_for_checks_s']} s for ledger checks) "
        f"from {load['clients']} clients; events received {load['events_received']}, "
        f"room messages {load['room_messages_received']}"
    )
    print(f"{'method':32} {'n':>8} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for method, p in report["latency"].items():
        if p["n"]:
            print(f"{method:32} {p['n']:8} {p['p50_ms']:9.2f} {p['p99_ms']:9.2f} {p['max_ms']:9.1f}")
    print("\nerrors by method and code:")
    for key, n in report["errors"].items():
        print(f"  {key}: {n}")
    print("\nfaults:")
    for f in report["faults"]:
        print(
            f"  {f['at']:7.1f} s  {f['kind']}: back in {f['recovered_s']} s; in flight {f['in_flight']}; "
            f"{f['detail']}" + (f"; ERROR {f['error']}" if f["error"] else "")
        )
    for kind, why in report["faults_skipped"].items():
        print(f"  skipped: {kind}: {why}")
    print("\nattacks (fresh connections, one at a time, all along):")
    for key, n in sorted(report["attacks"]["outcomes"].items()):
        print(f"  {key}: {n}")
    ledger = report["ledger"]
    print(
        f"\nledger: {ledger['entries']} by kind {ledger['by_kind']}; {len(ledger['checks'])} checks, "
        f"{ledger['violation_count']} violations"
    )
    for v in ledger["violations"][:20]:
        print(f"  {v}")
    print(f"\ncores kept busy, on average (of {report['cpu_cores']}):")
    for role, cores in report["cpu_cores_used"].items():
        print(f"  {role:28} {cores:6.3f}")
    print("\nRSS (MiB) after warm-up, per process run:")
    for role, r in sorted(report["rss"].items()):
        runs = "; ".join(
            f"{x['median_mib']} median, {x['growth_mib']:+} over {x['from_s']}-{x['to_s']} s"
            for x in r["runs"]
        )
        print(
            f"  {role:20} max {r['max_mib']:7.1f}  {runs or '(too short to judge)'}"
            + ("  UNBOUNDED" if r["unbounded"] else "")
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with what ``--ci`` and the defaults that follow the run's length set."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=10_000.0, help="requests/s asked of all callers together"
    )
    parser.add_argument("--repeats", type=int, default=3, help="times each kind of fault is injected")
    parser.add_argument(
        "--disk-mib",
        type=int,
        default=None,
        help="the small filesystem under one persona (0: no disk faults); default 64, or 4 per "
        "minute of the run if more (that persona's brain, about 2.2 MiB a minute under the full "
        "load, must fit beside the fault's filler)",
    )
    parser.add_argument(
        "--clock-jump",
        type=float,
        default=3600.0,
        help="seconds the wall clock is stepped each way (0: never)",
    )
    parser.add_argument(
        "--no-federation",
        dest="federation",
        action="store_false",
        help="one bus node, no NATS (the federated node's fault is skipped)",
    )
    parser.add_argument(
        "--no-ecosystem",
        dest="ecosystem",
        action="store_false",
        help="without the Academy, skill sharing and PersonaHub (and their kill -9 fault)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only",
        action="append",
        metavar="WORDS",
        help="inject only the faults whose name contains WORDS (repeatable), e.g. --only 'slow disk'",
    )
    parser.add_argument("--report", help="write report.json and PNG charts into this folder")
    parser.add_argument("--ci", action="store_true", help="the bounded run: 100 clients, every fault once")
    args = parser.parse_args(argv)
    if args.ci:
        args.minutes, args.clients, args.rate, args.repeats, args.disk_mib = 2.5, 100, 400.0, 1, 32
        args.clock_jump = min(args.clock_jump, 300.0)
    if args.disk_mib is None:
        args.disk_mib = max(64, int(4 * args.minutes))
    return args


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="personad-soak-") as tmp:
        report = uvloop.run(soak(args, Path(tmp)))
    print_report(report)
    if report["failures"]:
        for failure in report["failures"]:
            print(f"FAILED: {failure}")
        print("soak.py: FAIL")
        return 1
    print("soak.py: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
