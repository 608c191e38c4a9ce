"""persona.plugin.run against real bwrap: each limit stops the plugin and the result says which."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from daemon.client import BusClient
from daemon.persona.daemon import PersonaDaemon
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from tests.daemon.plugins.conftest import MakePlugin, SigningKey

Connect = Callable[..., Awaitable[BusClient]]


async def install_and_run(connect: Connect, folder: Any, payload: Any = None) -> dict[str, Any]:
    admin = await connect()
    await admin.call("persona.plugin.add", {"path": str(folder)}, to="persona:ada")
    plugin_id = folder.name
    result: dict[str, Any] = await admin.call(
        "persona.plugin.run", {"plugin_id": plugin_id, "input": payload}, to="persona:ada", deadline_ms=60_000
    )
    return result


async def test_a_plugin_runs_unprivileged_and_its_run_is_recorded(
    persona: PersonaDaemon,
    connect: Connect,
    state: StateDir,
    make_plugin: MakePlugin,
    trusted_key: SigningKey,
) -> None:
    """The plugin gets its input, runs as uid 65534 with no capabilities, sees no state dir; the run is
    recorded in plugins/runs.jsonl and counted in persona.plugins."""
    folder = make_plugin(
        "probe",
        f"""
        import os
        import personad_plugin as host
        status = open("/proc/self/status").read()
        caps = [l.split()[1] for l in status.splitlines() if l.startswith(("CapEff", "CapPrm", "CapBnd"))]
        host.finish({{
            "echo": host.input(),
            "uid": os.getuid(),
            "caps": caps,
            "sees_state": os.path.exists({str(state.root)!r}),
            "root": sorted(os.listdir("/")),
            "seccomp": [l.split()[1] for l in status.splitlines() if l.startswith("Seccomp:")],
        }})
        """,
    )
    result = await install_and_run(connect, folder, {"n": [1, 2, 3]})
    assert result["ok"], result
    output = result["output"]
    assert {"n": [1, 2, 3]} == output["echo"]
    assert 65534 == output["uid"]
    assert {"0000000000000000"} == set(output["caps"])
    assert output["sees_state"] is False
    assert ["2"] == output["seccomp"]  # filter mode: the network filter is on
    # Nothing of the host but the read-only system and interpreter folders, and its own.
    assert {"plugin", "tmp", "proc", "dev", "usr", "run"} <= set(output["root"])
    assert not {"etc", "home", "var", "srv", "mnt"} & set(output["root"])
    runs = (persona.session_dir.plugins / "runs.jsonl").read_text().splitlines()
    assert 1 == len(runs)
    line = json.loads(runs[0])
    assert ("probe", True, None) == (line["plugin_id"], line["ok"], line["stopped_by"])
    admin = await connect()
    (info,) = (await admin.call("persona.plugins", to="persona:ada"))["plugins"]
    assert ("probe", "none", trusted_key.public) == (info["id"], info["risk"], info["signer"])
    assert (1, 0) == (info["stats"]["runs"], info["stats"]["failures"])
    assert info["stats"]["mean_duration_s"] == line["duration_s"]


async def test_reading_another_personas_folder_is_stopped_as_forbidden_path(
    persona: PersonaDaemon,
    connect: Connect,
    state: StateDir,
    make_plugin: MakePlugin,
    trusted_key: SigningKey,
) -> None:
    secret = state.root / "personas" / "bob" / "notes.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text("bob's private notes")
    folder = make_plugin(
        "snoop",
        """
        import personad_plugin as host
        path = host.input()["path"]
        host.finish({"stolen": open(path).read()})
        """,
    )
    result = await install_and_run(connect, folder, {"path": str(secret)})
    assert (False, "forbidden_path", None) == (result["ok"], result["stopped_by"], result["output"])
    assert str(secret) in result["error"]
    assert "bob's private notes" not in json.dumps(result)


async def test_writing_into_its_own_folder_is_stopped_as_forbidden_path(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    """The plugin's folder is mounted read-only: a plugin cannot rewrite itself."""
    folder = make_plugin("rewrite", "open('/plugin/main.py', 'w').write('evil')\n")
    result = await install_and_run(connect, folder)
    assert "forbidden_path" == result["stopped_by"]
    assert "Read-only file system" in result["error"]


async def test_a_socket_without_the_network_permission_is_stopped_as_network_denied(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin(
        "phone-home",
        """
        import socket
        socket.create_connection(("192.0.2.1", 80), timeout=5).sendall(b"secrets")
        """,
    )
    result = await install_and_run(connect, folder)
    assert (False, "network_denied") == (result["ok"], result["stopped_by"])
    assert "network permission" in result["error"]


async def test_the_bus_on_the_hosts_loopback_is_out_of_reach(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey, bus: Any
) -> None:
    """The sandbox's loopback is its own: the bus listening on the host's 127.0.0.1 cannot be reached."""
    folder = make_plugin(
        "bus-knocker",
        """
        import socket, personad_plugin as host
        socket.create_connection(("127.0.0.1", host.input()["port"]), timeout=5)
        """,
    )
    port = int(bus.url.rsplit(":", 1)[1].split("/")[0])
    result = await install_and_run(connect, folder, {"port": port})
    assert "network_denied" == result["stopped_by"]


async def test_allocating_past_the_memory_limit_is_stopped_as_memory(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin(
        "hog", "blocks = [bytearray(64 << 20) for _ in range(8)]\n", limits={"memory_mb": 128}
    )
    result = await install_and_run(connect, folder)
    assert (False, "memory") == (result["ok"], result["stopped_by"])
    assert "MemoryError" in result["error"]


async def test_spinning_past_the_cpu_limit_is_stopped_as_cpu_time(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin("spin", "while True:\n    pass\n", limits={"cpu_s": 1, "wall_s": 60})
    result = await install_and_run(connect, folder)
    assert (False, "cpu_time") == (result["ok"], result["stopped_by"])
    assert 128 + 24 == result["exit_code"]  # SIGXCPU


async def test_running_past_the_wall_clock_is_killed_as_wall_clock(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    """A plugin that sleeps uses no CPU: only the wall-clock limit stops it."""
    folder = make_plugin("sleeper", "import time\ntime.sleep(600)\n", limits={"wall_s": 1.0})
    result = await install_and_run(connect, folder)
    assert (False, "wall_clock") == (result["ok"], result["stopped_by"])
    assert result["duration_s"] < 600


async def test_a_channel_request_outside_the_permissions_is_refused(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    """The channel answers permission_denied; a plugin that then fails is stopped_by permission_denied,
    and no memory was read or written."""
    admin = await connect()
    await admin.call("memory.remember", {"content": "the vault code is 1234"}, to="persona:ada")
    folder = make_plugin(
        "greedy",
        """
        import personad_plugin as host
        try:
            host.write_memory("planted")
        except host.ChannelError as exc:
            assert exc.reason == "permission_denied", exc
        host.read_memories("vault")
        """,
        permissions=("write_artifacts",),
    )
    result = await install_and_run(connect, folder)
    assert (False, "permission_denied", 2, 2) == (
        result["ok"],
        result["stopped_by"],
        result["calls"],
        result["denied"],
    )
    assert "read_memories" in result["error"] or "write_memories" in result["error"]
    recalled = await admin.call("memory.recall", {"query": "planted"}, to="persona:ada")
    assert [] == recalled["hits"]


async def test_a_plugin_that_handles_a_refusal_still_finishes(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin(
        "polite",
        """
        import personad_plugin as host
        try:
            host.chat("hello")
            asked = True
        except host.ChannelError as exc:
            asked = exc.reason
        host.finish({"asked": asked})
        """,
    )
    result = await install_and_run(connect, folder)
    assert (True, {"asked": "permission_denied"}, 1) == (result["ok"], result["output"], result["denied"])


async def test_garbage_on_the_channel_is_stopped_as_bad_output(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin("noisy", "print('hello, host')\nimport time\ntime.sleep(600)\n")
    result = await install_and_run(connect, folder)
    assert (False, "bad_output") == (result["ok"], result["stopped_by"])
    assert "hello, host" in result["error"]


async def test_creating_an_inet_socket_fails_at_once_without_network(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    """The seccomp filter refuses socket() for every family but AF_UNIX: no connect needed to be stopped."""
    folder = make_plugin(
        "raw",
        """
        import socket
        left, right = socket.socketpair()  # AF_UNIX stays usable
        left.sendall(b"x"); assert right.recv(1) == b"x"
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        """,
    )
    result = await install_and_run(connect, folder)
    assert (False, "network_denied") == (result["ok"], result["stopped_by"])
    assert "Address family not supported" in result["error"]


async def test_with_the_network_permission_sockets_can_be_made(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin(
        "netok",
        """
        import socket, personad_plugin as host
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        seccomp = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")]
        host.finish({"bound": s.getsockname()[1] > 0, "seccomp": seccomp})
        """,
        permissions=("network",),
    )
    result = await install_and_run(connect, folder)
    assert result["ok"], result
    assert {"bound": True, "seccomp": ["0"]} == result["output"]


async def test_without_bwrap_a_run_is_refused_and_nothing_runs_unsandboxed(
    persona: PersonaDaemon,
    connect: Connect,
    make_plugin: MakePlugin,
    trusted_key: SigningKey,
    tmp_path: Any,
    monkeypatch: Any,
) -> None:
    marker = tmp_path / "ran"
    folder = make_plugin("eager", f"open({str(marker)!r}, 'w').write('ran')\n")
    admin = await connect()
    await admin.call("persona.plugin.add", {"path": str(folder)}, to="persona:ada")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RpcError) as info:
        await admin.call("persona.plugin.run", {"plugin_id": "eager"}, to="persona:ada")
    assert (ErrorCode.INTERNAL_ERROR, "sandbox_unavailable") == (info.value.code, info.value.data["reason"])
    assert not marker.exists()


def test_the_private_tmp_is_mounted_before_anything_that_may_live_under_tmp(tmp_path: Any) -> None:
    """bwrap mounts in order: a tmpfs on /tmp laid after the binds hid a venv or checkout under /tmp.

    Found by a test run from a fresh clone in /tmp, where every plugin crashed:
    its interpreter was no longer there.
    """
    from daemon.plugins.manifest import Manifest
    from daemon.plugins.sandbox import bwrap_argv

    manifest = Manifest(id="probe", name="Probe", version="1.0.0", entry="main.py", permissions=[])
    argv = bwrap_argv(tmp_path, manifest)
    tmpfs = argv.index("--tmpfs")
    assert "/tmp" == argv[tmpfs + 1]
    binds = [i for i, arg in enumerate(argv) if arg == "--ro-bind"]
    assert binds, argv
    assert all(tmpfs < i for i in binds), argv
