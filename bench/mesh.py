#!/usr/bin/env python
"""Skill sharing: transfer throughput from one and from three seeders, against one whole-file call.

    .venv/bin/python bench/mesh.py [--quick] [--mib 16] [--rounds 3]

Real components only, on 127.0.0.1 in a throwaway folder: a
:class:`daemon.bus.Bus` in this process, and every installation (its own
state dir, adapter store and signing key) as its own
``personad skills serve`` process, as deployed:

* ``hub``, the bus's own state dir: the tracker (cap:skills) and mesh:hub;
* ``pub``: publishes the skill (an adapter of ``--mib`` MiB in SmolLM2's
  shapes, real PEFT safetensors of random weights) with ``skill.announce``;
* ``s1``, ``s2``: fetch it from pub and so seed it too;
* a fresh downloader per round, stopped after its fetch (every holder
  seeds, so a downloader left running would join the next round's swarm).

Figures, each the median of ``--rounds`` rounds:

1. ``skill.fetch`` with pub as the only seeder, then with pub, s1 and s2
   (the ratio is what the swarm buys);
2. the baseline a user would otherwise reach for: one bus call that returns
   the whole file in one frame, from a process that holds it (this script
   with ``--serve-file``), plus one sha256 of it: no pieces, no per-piece
   hashes, no signature, no install. The overhead of piecing and
   verification is the fetch's time over this one's. The bus's frame limit
   is raised to 64 MiB for it (the default 16 MiB would refuse the frame).
3. a swarm of three where one seeder's store object was corrupted on disk
   after it fetched (a real fault: it serves what its disk now holds): the
   download completes, the hash matches, and the bench prints the seeder
   it banned.

``--quick`` (seconds): a 4 MiB adapter, one round, then the corrupt
swarm. Every child is stopped on the way out, whatever happens. The last
line is ``mesh.py: ok`` when every download completed with the right hash
and the corrupt seeder was banned, else ``mesh.py: FAIL``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from daemon.bus import Bus, BusConfig  # noqa: E402
from daemon.client import BusClient  # noqa: E402
from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore  # noqa: E402
from daemon.mesh.service import MESH_GRANTS  # noqa: E402
from daemon.state import StateDir  # noqa: E402

SKILL = "bench-skill"
BASE_MODEL = "SmolLM2-135M-Instruct"
PIECE = 256 * 1024
FETCH_DEADLINE_MS = 600_000
#: SmolLM2-135M: 30 layers, hidden 576, 3 key/value heads of 64 (k/v project to 192).
LAYERS, HIDDEN, KV = 30, 576, 192
PROJECTIONS = {
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (HIDDEN, KV),
    "v_proj": (HIDDEN, KV),
    "o_proj": (HIDDEN, HIDDEN),
}


def make_adapter(folder: Path, mib: float, seed: int = 5) -> Path:
    """A PEFT LoRA folder for SmolLM2's attention projections, about ``mib`` MiB of float32."""
    per_rank = LAYERS * sum(i + o for i, o in PROJECTIONS.values()) * 4
    rank = max(1, round(mib * 1024 * 1024 / per_rank))
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(LAYERS):
        for name, (fan_in, fan_out) in PROJECTIONS.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, fan_in), dtype=np.float32) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((fan_out, rank), dtype=np.float32) * 0.01
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(PROJECTIONS),
        "bias": "none",
        "base_model_name_or_path": BASE_MODEL,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config), "utf-8")
    return folder


class Peers:
    """``personad skills serve`` processes, one per installation, all stopped by :meth:`stop_all`."""

    def __init__(self, root: Path, hub: StateDir, url: str) -> None:
        self.root, self.hub, self.url = root, hub, url
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def state(self, name: str) -> StateDir:
        return self.hub if name == "hub" else StateDir(self.root / name)

    async def start(self, name: str, client: BusClient) -> None:
        state = self.state(name)
        argv = [sys.executable, "-m", "daemon", "--state-dir", str(state.root), "--url", self.url]
        argv += ["skills", "serve", "--node", name, "--base-model", BASE_MODEL]
        env = {**os.environ, "PERSONAD_LOG_LEVEL": "WARNING"}
        if name != "hub":
            argv.append("--no-tracker")
            issued = self.hub.issue_token(
                name=f"mesh:{name}", role="service", subject=f"mesh:{name}", grants=MESH_GRANTS
            )
            env["PERSONAD_MESH_TOKEN"] = issued.token
        self.procs[name] = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        await wait_for_client(client, f"mesh:{name}", present=True)

    async def stop(self, name: str, client: BusClient | None = None) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if client is not None:
            await wait_for_client(client, f"mesh:{name}", present=False)

    async def stop_all(self) -> None:
        for name in list(self.procs):
            await self.stop(name)


async def wait_for_client(client: BusClient, client_id: str, *, present: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        listed = await client.call("bus.clients", {})
        ids = {c["id"] if isinstance(c, dict) else c for c in listed["clients"]}
        if (client_id in ids) == present:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{client_id} did not {'join' if present else 'leave'} the bus")
        await asyncio.sleep(0.1)


async def fetch(client: BusClient, node: str, skill_id: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = await client.call(
        "skill.fetch", {"skill_id": skill_id}, to=f"mesh:{node}", deadline_ms=FETCH_DEADLINE_MS
    )
    result["wall_s"] = time.perf_counter() - t0
    return dict(result)


async def serve_file(url: str, path: str) -> None:
    """The --serve-file mode: answer every request with the whole file, until stdin closes."""
    data = await asyncio.to_thread(Path(path).read_bytes)

    async def handler(request: Any, ctx: Any) -> dict[str, Any]:
        return {"skill_id": "0" * 64, "index": 0, "data": data}

    async with BusClient(url, token=os.environ["PERSONAD_TOKEN"], kind="bench", name="file", handler=handler):
        print("file ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def whole_file_call(client: BusClient, url: str, hub: StateDir, path: Path, rounds: int) -> list[float]:
    issued = hub.issue_token(name="bench:file", role="service", subject="bench:file")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-file", url, str(path),
        env={**os.environ, "PERSONAD_TOKEN": issued.token},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 60)
        await wait_for_client(client, "bench:file", present=True)
        expected = hashlib.sha256(await asyncio.to_thread(path.read_bytes)).hexdigest()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            answer = await client.call(
                "skill.piece", {"skill_id": "0" * 64, "index": 0}, to="bench:file", deadline_ms=120_000
            )
            ok = hashlib.sha256(answer["data"]).hexdigest() == expected
            times.append(time.perf_counter() - t0)
            if not ok:
                raise RuntimeError("the whole-file call returned other bytes")
        return times
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def corrupt(state: StateDir, sha256: str) -> None:
    """Flip bytes in the middle of a stored object, in place (same size): a disk gone bad."""
    path = AdapterStore.for_state(state.root).object_path(sha256) / WEIGHTS_FILE
    os.chmod(path, 0o600)
    with path.open("r+b") as f:
        size = f.seek(0, 2)
        for offset in range(size // 3, size // 3 + 64 * PIECE, PIECE):
            if offset >= size:
                break
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))


async def run(mib: float, rounds: int, quick: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="personad-bench-mesh-"))
    out: dict[str, Any] = {"mib": mib, "rounds": rounds, "piece_size": PIECE}
    peers: Peers | None = None
    try:
        hub = StateDir(root / "hub")
        admin = hub.init()
        assert admin is not None
        config = BusConfig(port=0, max_message_bytes=64 * 1024 * 1024)
        async with (
            Bus(config, hub.tokens()) as bus,
            BusClient(bus.url, token=admin, kind="cli", name="bench") as client,
        ):
            peers = Peers(root, hub, bus.url)
            folder = make_adapter(root / "src", mib)
            pub_store = AdapterStore.for_state(StateDir(root / "pub").root)
            record = pub_store.import_folder(folder, SKILL, meta={"base_model": BASE_MODEL})
            out["bytes"] = record.bytes
            for name in ("hub", "pub"):
                await peers.start(name, client)
            announced = await client.call(
                "skill.announce", {"skill": SKILL, "piece_size": PIECE}, to="mesh:pub"
            )
            skill_id = announced["skill_id"]
            out["pieces"] = len(announced["manifest"]["piece_hashes"])
            size_mib = record.bytes / (1024 * 1024)
            print(f"skill {SKILL}: {size_mib:.1f} MiB in {out['pieces']} pieces of {PIECE // 1024} KiB")

            async def round_with_fresh_downloader(tag: str) -> dict[str, Any]:
                await peers.start(tag, client)
                try:
                    result = await fetch(client, tag, skill_id)
                finally:
                    await peers.stop(tag, client)
                if result["adapter_sha256"] != record.sha256:
                    raise RuntimeError(f"{tag} installed other bytes")
                return result

            one = [await round_with_fresh_downloader(f"d1-{r}") for r in range(rounds)]
            for name in ("s1", "s2"):
                await peers.start(name, client)
                await fetch(client, name, skill_id)
            three = [await round_with_fresh_downloader(f"d3-{r}") for r in range(rounds)]
            whole = await whole_file_call(client, bus.url, hub, folder / WEIGHTS_FILE, rounds)

            def mib_s(seconds: float) -> float:
                return size_mib / seconds

            t1 = statistics.median(r["wall_s"] for r in one)
            t3 = statistics.median(r["wall_s"] for r in three)
            tw = statistics.median(whole)
            out["one_seeder"] = {"s": t1, "mib_s": mib_s(t1), "seeders": one[-1]["seeders"]}
            out["three_seeders"] = {"s": t3, "mib_s": mib_s(t3), "seeders": three[-1]["seeders"]}
            out["whole_file_call"] = {"s": tw, "mib_s": mib_s(tw)}
            print(f"one seeder:    {t1:6.2f} s  {mib_s(t1):6.1f} MiB/s   (pieces from {one[-1]['seeders']})")
            print(
                f"three seeders: {t3:6.2f} s  {mib_s(t3):6.1f} MiB/s   (pieces from {three[-1]['seeders']})"
            )
            print(f"one whole-file call + sha256: {tw:6.2f} s  {mib_s(tw):6.1f} MiB/s")
            print(
                f"ratios: three/one seeders {t1 / t3:.2f}x faster; "
                f"one-seeder fetch / whole-file call {t1 / tw:.2f}x the time "
                f"(piecing, per-piece and whole-file hashes, signature, install)"
            )

            # The corrupt swarm: s2's disk goes bad after it fetched; pub, s1, s2 seed.
            corrupt(peers.state("s2"), record.sha256)
            await peers.start("dc", client)
            try:
                result = await fetch(client, "dc", skill_id)
            finally:
                await peers.stop("dc", client)
            out["corrupt"] = {
                "banned": result["banned"],
                "seeders": result["seeders"],
                "sha_ok": result["adapter_sha256"] == record.sha256,
                "s": result["wall_s"],
            }
            print(
                f"corrupt swarm: banned {result['banned']}, pieces from {result['seeders']}, "
                f"hash {'matches' if out['corrupt']['sha_ok'] else 'DIFFERS'} ({result['wall_s']:.2f} s)"
            )
            await peers.stop_all()
        out["load_average"] = os.getloadavg()
        out["ok"] = out["corrupt"]["sha_ok"] and out["corrupt"]["banned"] == ["mesh:s2"]
        return out
    finally:
        if peers is not None:
            await peers.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-file":
        asyncio.run(serve_file(sys.argv[2], sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=float, default=16.0, help="adapter size in MiB")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (the median is printed)")
    parser.add_argument("--quick", action="store_true", help="4 MiB, one round, then the corrupt swarm")
    args = parser.parse_args()
    mib, rounds = (4.0, 1) if args.quick else (args.mib, args.rounds)
    out = asyncio.run(run(mib, rounds, args.quick))
    load = ", ".join(f"{x:.2f}" for x in out["load_average"])
    print(f"load average (1, 5, 15 min) at the end: {load}")
    print("mesh.py: ok" if out["ok"] else "mesh.py: FAIL")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
