"""A call whose connection dies while its frame is still being sent: one error, nothing left over.

Found by the soak (bench/soak.py): when the bus was killed, a caller in the
middle of sending a large frame got a raw ConnectionResetError instead of
CONNECTION_LOST, and the reader's CONNECTION_LOST, set on the call's future
meanwhile, was never read, so asyncio logged "Future exception was never
retrieved" for each such call.

The peer here is a real WebSocket server on loopback that answers the hello
as the bus does, then stops reading and, once the client's frame is stuck
in the socket, aborts the connection.
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from daemon.client import BusClient
from protocol import JSON, ErrorCode, RpcError

HELLO_RESULT = {
    "client_id": "cli:t",
    "bus_version": "test",
    "protocol": 1,
    "limits": {
        "max_message_bytes": 64 * 2**20,
        "max_inflight": 256,
        "default_deadline_ms": 30_000,
        "max_deadline_ms": 3_600_000,
    },
    "grants": ["*"],
}


async def test_a_connection_lost_mid_send_is_one_error_and_no_orphan_future() -> None:
    loop = asyncio.get_running_loop()
    orphans: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: orphans.append(context))
    stuck = asyncio.Event()

    async def peer(ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": hello["id"], "result": HELLO_RESULT}))
        ws.transport.pause_reading()  # the kernel's buffers fill, then the client's
        await stuck.wait()
        ws.transport.abort()

    try:
        async with serve(
            peer, "127.0.0.1", 0, subprotocols=[Subprotocol(JSON.subprotocol)], max_size=None
        ) as server:
            port = server.sockets[0].getsockname()[1]
            client = BusClient(f"ws://127.0.0.1:{port}", token="t", kind="cli", codec=JSON)
            await client.start()
            call = asyncio.ensure_future(client.call("bus.ping", {"blob": "x" * (32 * 2**20)}))
            await asyncio.sleep(0.5)
            assert not call.done()  # the frame is still on its way
            stuck.set()
            with pytest.raises(RpcError) as lost:
                await call
            assert ErrorCode.CONNECTION_LOST == lost.value.code
            await client.close()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    never_read = [c for c in orphans if "never retrieved" in str(c.get("message", ""))]
    assert [] == never_read
