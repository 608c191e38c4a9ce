"""The egress proxy on its own, spoken to over real sockets as Chromium speaks to it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from daemon.browser.netpolicy import NetworkPolicy
from daemon.browser.proxy import EgressProxy, Listener
from tests.conftest import WAIT


class _Echo(BaseHTTPRequestHandler):
    """Answers with the request line and headers it got, so the test sees what went upstream."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = (self.requestline + "\n" + str(self.headers)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
async def listener(upstream: int) -> AsyncIterator[Listener]:
    proxy = EgressProxy(NetworkPolicy([f"127.0.0.1:{upstream}"]))
    yield await proxy.listen("test")
    await proxy.aclose()


async def exchange(listener: Listener, request: bytes) -> bytes:
    """Send ``request`` to the proxy and read until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


async def test_plain_http_goes_to_the_checked_address_in_origin_form_with_connection_close(
    listener: Listener, upstream: int
) -> None:
    answer = await exchange(
        listener,
        f"GET http://127.0.0.1:{upstream}/a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\n"
        "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    seen = body.decode().lower()
    assert seen.startswith("get /a?b=1 http/1.1")
    assert "connection: close" in seen
    assert "proxy-connection" not in seen
    assert "proxy-authorization" not in seen


async def test_a_denied_address_gets_no_answer_and_connect_gets_403(listener: Listener) -> None:
    assert b"" == await exchange(listener, b"GET http://10.0.0.1/ HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n")
    answer = await exchange(listener, b"CONNECT [::ffff:169.254.169.254]:443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 Forbidden")
    blocked = [(e.host, e.rule) for e in listener.events]
    assert [
        ("10.0.0.1", "private 10.0.0.0/8"),
        ("::ffff:169.254.169.254", "link-local 169.254.0.0/16 (as ::ffff:a9fe:a9fe)"),
    ] == blocked


async def test_connect_to_an_allowed_address_is_a_tunnel(listener: Listener, upstream: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\n\r\n".encode())
        assert b"HTTP/1.1 200 Connection established\r\n\r\n" == await reader.readuntil(b"\r\n\r\n")
        writer.write(b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), WAIT)
        assert b"GET /t HTTP/1.1" in answer
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /relative HTTP/1.1",  # not a proxy request
        b"GET ftp://x/ HTTP/1.1",  # only http is forwarded as such
        b"CONNECT nohost HTTP/1.1",
        b"CONNECT x:99999 HTTP/1.1",
        b"GARBAGE",
    ],
)
async def test_what_it_cannot_carry_is_a_400(listener: Listener, request_line: bytes) -> None:
    assert (await exchange(listener, request_line + b"\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert not listener.events  # nothing resolved, nothing tried
