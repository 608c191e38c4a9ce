"""Child process of the durability tests: remember in a loop, print each ack.

Usage: python remember_loop.py STATE_DIR PERSONA_ID WORKERS [keyed]

Each line printed is "<id> <content>", written and flushed only after
``remember`` returned, i.e. after the memory was acknowledged. With
``keyed``, each call carries the idempotency key ``k-<worker>-<i>`` (its
content is "durable memory <worker>-<i>"), as a client that retries would. The parent
kills this process with SIGKILL at some point and checks the acks.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from daemon.brain import Brain, brain_path, load_or_create_key


async def worker(brain: Brain, number: int, keyed: bool) -> None:
    i = 0
    while True:
        content = f"durable memory {number}-{i}"
        if keyed:
            memory_id, _ = await brain.remember_once(
                content, caller="cli:loop", key=f"k-{number}-{i}", source="loop"
            )
        else:
            memory_id = await brain.remember(content, source="loop")
        sys.stdout.write(f"{memory_id} {content}\n")
        sys.stdout.flush()
        i += 1


async def main(state_dir: Path, persona_id: str, workers: int, keyed: bool) -> None:
    key = load_or_create_key(state_dir, persona_id)
    path = brain_path(state_dir, persona_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    async with await Brain.open(path, key) as brain:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        async with asyncio.TaskGroup() as group:
            for number in range(workers):
                group.create_task(worker(brain, number, keyed))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["keyed"]))
