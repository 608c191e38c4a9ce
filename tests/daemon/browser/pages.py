"""A local web server for browser tests: known pages on 127.0.0.1:0.

A real HTTP server (``http.server`` on a thread), so Chromium loads real
pages over a real socket. Pages:

``/``         a 1280-wide page with a value to read (``#value``) and a 200x100
              red box (``#box``) placed below a 1500 px spacer, 2000 px tall in all
``/cookie``   sets no cookie itself: tests set and read them with browser_js
``/hang``     never finishes (until the server stops): a page that never loads
``/slow``     a page whose image is ``/hang``, so its load event never fires
"""

from __future__ import annotations

import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INDEX = b"""<!doctype html>
<html><head><title>personad test page</title>
<style>body{margin:0;background:#fff} p{margin:0} #spacer{height:1500px}
#box{width:200px;height:100px;background:#f00} #tail{height:400px}</style></head>
<body><div id="spacer"><p id="value">forty-two</p></div><div id="box"></div>
<div id="tail"></div></body></html>
"""
SIMPLE = b"<!doctype html><html><head><title>simple</title></head><body>simple</body></html>"
SLOW = b"<!doctype html><html><head><title>slow</title></head><body><img src='/hang'></body></html>"

#: Height of INDEX in CSS pixels: spacer 1500 + box 100 + tail 400.
INDEX_HEIGHT = 2000


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A browser killed mid-load leaves a broken pipe behind: expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class PageServer:
    def __init__(self) -> None:
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path == "/hang":
                    server.release.wait(60)
                    self.send_error(503)
                    return
                body = {"/": INDEX, "/cookie": SIMPLE, "/simple": SIMPLE, "/slow": SLOW}.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="page-server", daemon=True)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@contextmanager
def serve_pages() -> Iterator[PageServer]:
    server = PageServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.close()


def png_pixel(data: bytes, x: int, y: int) -> tuple[int, ...]:
    """The colour at (x, y) of an 8-bit RGB or RGBA PNG, decoded for real (PNG spec §9)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, channels = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, _height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8, depth
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    for row in range(y + 1):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + predictor) & 0xFF
        previous = line
    return tuple(previous[x * channels : x * channels + 3])
