"""The doors: other ways in to the same bus.

Each door translates what a caller sends (an HTTP request, an OpenAI chat
completion, an MCP tool call, a click in the web console) into bus calls made
with the caller's own token, and the bus's answers back. None has logic of
its own: grants, validation, deadlines and errors are the bus's, so a token
is refused the same way through every door.

In the bus process, on its port:

- ``http_server.py``: HTTP/1.1 (h11) beside the WebSocket upgrade;
- ``session.py``: a bus session with no socket, through which the bus
  process makes calls for an HTTP caller;
- ``api.py``: the HTTP API (``/v1/call``, ``/v1/events``, pairing, health,
  the console's files) and the routing the other HTTP doors plug into;
- ``http_io.py``: reading JSON bodies and writing JSON, errors and
  Server-Sent Events, the same way for every HTTP door;
- ``status.py``: the bus's error codes as HTTP statuses;
- ``pairing.py``: one-time codes the web console trades for a token;
- ``openai_compat.py`` (+ ``openai_wire.py``): OpenAI's Chat Completions API;
- ``mimic_rest.py``: the REST routes of the persona ecosystem;
- ``openapi.py`` (+ ``openapi_http.py``): ``/openapi.json``, generated from the
  command registry (the door's own routes described by hand);
- ``console/``: the web console (static files).

In a process of its own (``personad mcp``): ``mcp_server.py`` (stdio and
Streamable HTTP) and ``mcp_tools.py`` (the tools), translating onto the
HTTP API. ``cli.py`` holds ``personad console`` and ``personad mcp``.
"""
