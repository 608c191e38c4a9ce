"""The doors: other ways in to the same bus.

Each door translates what a caller sends (an HTTP request, an OpenAI chat
completion, an MCP tool call, a click in the web console) into bus calls made
with the caller's own token, and the bus's answers back. None has logic of
its own: grants, validation, deadlines and errors are the bus's, so a token
is refused the same way through every door.

- ``session.py``: a bus session with no socket, through which the bus
  process itself makes calls for an HTTP caller;
- ``http_server.py``: HTTP/1.1 (h11) on the bus's own port, beside the
  WebSocket upgrade;
- ``api.py``: the HTTP API (``/v1/call``, ``/v1/events``, pairing, health);
- ``status.py``: the bus's error codes as HTTP statuses.
"""
