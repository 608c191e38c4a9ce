"""The network policy (finding 3, SSRF): what Chromium may connect to, through the real worker.

Real headless Chromium driven by the real worker on a real bus on
127.0.0.1:0. A "secret" HTTP server on 127.0.0.1 stands for what must stay
out of reach (a local service, the bus's /metrics); it counts every request
it gets, so "the secret never reached the page" is checked at its source. A
second local server plays the public web: the tests allow-list it by address
and port, as an operator would (there is no internet here).

Each of these failed on the code before the policy: Chromium loaded every
form of 127.0.0.1, and subrequests of an allowed page went anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from daemon.browser.netpolicy import NetworkPolicy, denied_rule, parse_allow_entry
from daemon.browser.worker import URL_BLOCKED, BrowserWorker
from daemon.client import BusClient
from daemon.errors import ConfigError
from protocol import ErrorCode, RpcError

SECRET = "s3cret-7f00-token"

#: (port, paths requested) of a local server.
Server = tuple[int, list[str]]
Connect = Callable[..., Awaitable[BusClient]]
StartWorker = Callable[..., Awaitable[BrowserWorker]]


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def serve(routes: dict[str, tuple[int, dict[str, str], str]]) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1:0 answering ``routes`` (path -> status, headers, body).

    Yields (port, hits): every path requested, in order.
    """
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            status, headers, body = routes.get(self.path.partition("?")[0], (404, {}, "no such page"))
            data = body.encode()
            self.send_response(status)
            for name, value in {"Content-Type": "text/html", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = _Quiet(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def secret() -> Iterator[tuple[int, list[str]]]:
    page = f"<!doctype html><title>{SECRET}</title><p id=s>{SECRET}</p>"
    with serve({"/": (200, {"Access-Control-Allow-Origin": "*"}, page)}) as server:
        yield server


async def refused(call: Awaitable[Any]) -> RpcError:
    with pytest.raises(RpcError) as info:
        await call
    return info.value


LOOPBACK_FORMS = [
    "127.0.0.1",
    "127.1",
    "0x7f000001",
    "2130706433",
    "[::ffff:127.0.0.1]",
    "localhost",
    "[::1]",
]


async def test_every_form_of_loopback_is_refused_with_the_rule(
    worker: BrowserWorker, connect: Connect, secret: Server
) -> None:
    """screenshot and browser_js to a loopback secret, in any spelling: FORBIDDEN, URL_BLOCKED, no request."""
    port, hits = secret
    caller = await connect()
    # https goes through the proxy as CONNECT: refused the same way, before any TLS.
    urls = [f"http://{form}:{port}/" for form in LOOPBACK_FORMS]
    urls += [f"https://127.0.0.1:{port}/", f"https://localhost:{port}/"]
    for url in urls:
        for method, params in (
            ("screenshot", {"url": url}),
            ("browser_js", {"url": url, "script": "document.title"}),
        ):
            error = await refused(caller.call(method, params, to="cap:browser"))
            assert ErrorCode.FORBIDDEN == error.code, (url, method, error)
            assert URL_BLOCKED == error.data["error"]
            assert error.data["rule"].startswith("loopback"), error.data
            assert error.data["address"] in {"127.0.0.1", "::ffff:7f00:1", "::1"}, error.data
            assert url == error.data["requested_url"]
            assert "blocked by the browser's network policy" in error.message
            assert SECRET not in str(error.data)
    assert [] == hits  # nothing reached the secret server, by any spelling


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("169.254.169.254", "link-local 169.254.0.0/16"),
        ("10.0.0.1", "private 10.0.0.0/8"),
        ("192.168.1.1", "private 192.168.0.0/16"),
        ("172.16.0.1", "private 172.16.0.0/12"),
        ("100.64.0.1", "cgnat 100.64.0.0/10"),
        ("[fe80::1]", "link-local fe80::/10"),
        ("[fc00::1]", "ula fc00::/7"),
        ("0.0.0.0", "unspecified 0.0.0.0/8"),
        ("[::ffff:10.0.0.1]", "private 10.0.0.0/8 (as ::ffff:a00:1)"),
    ],
)
async def test_private_and_metadata_addresses_are_refused_before_connecting(
    worker: BrowserWorker, connect: Connect, host: str, rule: str
) -> None:
    """Metadata service, LAN, CGNAT, link-local, ULA: refused by rule, before any connection is tried.

    The answer names the policy's rule (FORBIDDEN), not a network error
    (unreachable, timed out): the proxy decided on the address and never
    opened a socket to it (proxy.py checks every address before connecting).
    """
    caller = await connect()
    url = f"http://{host}/latest/meta-data/"
    error = await refused(caller.call("browser_js", {"url": url, "script": "1"}, to="cap:browser"))
    assert (ErrorCode.FORBIDDEN, URL_BLOCKED, rule) == (error.code, error.data["error"], error.data["rule"])
    owner = str(caller.client_id)
    [listener] = [lst for lst in worker.proxy.listeners.values() if lst.tag.startswith(owner + "#")]
    assert all(event.blocked for event in listener.events)  # never a connection failure


async def test_an_allowed_page_cannot_reach_a_denied_address_in_any_way(
    start_worker: StartWorker, connect: Connect, secret: Server, bus: Any
) -> None:
    """fetch, XHR, redirects, iframes, images and WebSockets from an allowed page to loopback all fail."""
    port, hits = secret
    target = f"http://127.0.0.1:{port}/"
    page = (
        f"<!doctype html><title>public</title><iframe id=f src='{target}'></iframe><img id=i src='{target}'>"
    )
    routes = {
        "/": (200, {}, page),
        "/redirect": (302, {"Location": target}, ""),
        "/ok": (200, {"Access-Control-Allow-Origin": "*"}, "public data"),
    }
    with serve(routes) as (public_port, public_hits):
        public = f"http://127.0.0.1:{public_port}"
        await start_worker(allow=(f"127.0.0.1:{public_port}",))
        caller = await connect()

        async def js(script: str, **params: object) -> object:
            result = await caller.call("browser_js", {"script": script, **params}, to="cap:browser")
            return result["value"]

        # A control: the page loads, and fetches from its own allowed origin work.
        assert "public data" == await js("fetch('/ok').then(r => r.text())", url=public + "/")
        fetched = await js(f"fetch('{target}').then(r => r.text()).catch(e => 'failed: ' + e)")
        assert fetched == "failed: TypeError: Failed to fetch"
        xhr = await js(
            "new Promise(done => { const x = new XMLHttpRequest(); x.open('GET', "
            f"'{target}'); x.onload = () => done('loaded: ' + x.responseText);"
            " x.onerror = () => done('error'); x.send(); })"
        )
        assert "error" == xhr
        # The bus's own WebSocket on loopback: refused as well (CONNECT through the proxy).
        ws = await js(
            f"new Promise(done => {{ const w = new WebSocket('{bus.url}');"
            " w.onopen = () => done('open'); w.onerror = () => done('error'); })"
        )
        assert "error" == ws
        metrics = await js(
            f"fetch('{bus.url.replace('ws://', 'http://')}/metrics').then(r => r.text()).catch(e => 'failed')"
        )
        assert "failed" == metrics
        # The iframe and the image never loaded anything of the secret's.
        assert 0 == await js("document.getElementById('i').naturalWidth")
        # A redirect from the allowed page to the secret fails the navigation, naming the rule.
        error = await refused(
            caller.call("browser_js", {"url": public + "/redirect", "script": "1"}, to="cap:browser")
        )
        assert (ErrorCode.FORBIDDEN, target) == (error.code, error.data["url"])
        assert public + "/redirect" == error.data["requested_url"]
        assert "/redirect" in public_hits
    assert [] == hits


async def test_allow_list_entries_open_exactly_what_they_name(
    start_worker: StartWorker, connect: Connect, secret: Server
) -> None:
    """name:port and address:port allow that port; the same host on another port stays denied."""
    port, hits = secret
    with serve({"/": (200, {}, "<title>other</title>")}) as (other_port, other_hits):
        await start_worker(allow=(f"localhost:{port}",))
        caller = await connect()
        result = await caller.call(
            "browser_js", {"url": f"http://localhost:{port}/", "script": "document.title"}, to="cap:browser"
        )
        assert SECRET == result["value"]
        error = await refused(
            caller.call(
                "browser_js", {"url": f"http://localhost:{other_port}/", "script": "1"}, to="cap:browser"
            )
        )
        assert ErrorCode.FORBIDDEN == error.code
        # The name was allowed, not the address: 127.0.0.1:<port> is still denied.
        error = await refused(
            caller.call("browser_js", {"url": f"http://127.0.0.1:{port}/", "script": "1"}, to="cap:browser")
        )
        assert ErrorCode.FORBIDDEN == error.code
        assert [] == other_hits
    assert "/" == hits[0]  # (then Chromium's /favicon.ico, from the same allowed name)
    assert {"/", "/favicon.ico"} >= set(hits)


async def test_a_bad_allow_entry_stops_the_worker_with_what_is_accepted(start_worker: StartWorker) -> None:
    with pytest.raises(ConfigError, match="invalid browser allow-list entry 'http://x/'"):
        await asyncio.wait_for(start_worker(allow=("http://x/",)), 30)


# -- the policy's decisions, address by address --------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("::", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("fd12:3456::1", "ula"),
        ("100.127.255.255", "cgnat"),
    ],
)
def test_denied_rules(address: str, rule: str) -> None:
    import ipaddress

    found = denied_rule(ipaddress.ip_address(address))
    assert found is not None
    assert found.startswith(rule + " "), found


def test_public_addresses_pass_and_entries_parse() -> None:
    import ipaddress

    policy = NetworkPolicy(["10.1.0.0/16", "127.0.0.1:8000", "[::1]:9000", "Intranet.Example.:443"])
    check = policy.check
    assert check("example.org", 443, ipaddress.ip_address("93.184.215.14")).allowed
    assert check("example.org", 443, ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:caa6")).allowed
    assert check("x", 1, ipaddress.ip_address("10.1.2.3")).allowed
    assert not check("x", 1, ipaddress.ip_address("10.2.0.1")).allowed
    assert check("127.0.0.1", 8000, ipaddress.ip_address("127.0.0.1")).allowed
    assert not check("127.0.0.1", 8001, ipaddress.ip_address("127.0.0.1")).allowed
    assert check("::1", 9000, ipaddress.ip_address("::1")).allowed
    assert check("intranet.example", 443, ipaddress.ip_address("192.168.0.5")).allowed
    assert not check("intranet.example", 80, ipaddress.ip_address("192.168.0.5")).allowed
    for bad in ("", "10.0.0.0/33", "host", "host:0", "host:99999", "[::1]", "http://x/"):
        with pytest.raises(ConfigError, match="invalid browser allow-list entry"):
            parse_allow_entry(bad)


@contextmanager
def udp_listener() -> Iterator[tuple[int, list[bytes]]]:
    """A UDP socket on 127.0.0.1:0 recording every datagram (a STUN/TURN/QUIC server's stand-in)."""
    received: list[bytes] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                received.append(sock.recv(4096))

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], received
    finally:
        stop.set()
        thread.join(10)
        sock.close()


async def test_no_udp_leaves_outside_the_proxy(start_worker: StartWorker, connect: Connect) -> None:
    """WebRTC (STUN, TURN over UDP) and WebTransport (QUIC) send nothing to a loopback UDP port.

    UDP cannot go through an HTTP proxy, so these would reach any address
    directly. The page is an allowed one on 127.0.0.1, a secure context, so
    WebTransport is available to it.
    """
    with udp_listener() as (port, received), serve({"/": (200, {}, "<title>public</title>")}) as (page, _):
        await start_worker(allow=(f"127.0.0.1:{page}",))
        caller = await connect()
        rtc = (
            "new Promise(async done => { const pc = new RTCPeerConnection({iceServers: ["
            f"{{urls: 'stun:127.0.0.1:{port}'}}, {{urls: 'turn:127.0.0.1:{port}?transport=udp',"
            " username: 'u', credential: 'p'}]}); pc.createDataChannel('x'); const found = [];"
            " pc.onicecandidate = e => e.candidate ? found.push(e.candidate.candidate) : done(found);"
            " await pc.setLocalDescription(await pc.createOffer()); setTimeout(() => done(found), 3000); })"
        )
        result = await caller.call(
            "browser_js", {"url": f"http://127.0.0.1:{page}/", "script": rtc}, to="cap:browser"
        )
        assert [] == result["value"]  # not even a host candidate: no UDP socket at all
        transport = (
            "new Promise(done => { const w = new WebTransport('https://127.0.0.1:"
            f"{port}/'); w.ready.then(() => done('ready'), e => done('failed')); "
            "w.closed.catch(() => {}); setTimeout(() => done('pending'), 3000); })"
        )
        result = await caller.call("browser_js", {"script": transport}, to="cap:browser")
        assert "ready" != result["value"]
    assert [] == received
