"""JSON Schema export and the registry."""

from __future__ import annotations

import json
import subprocess
import sys

from protocol import REGISTRY
from protocol.schema import export


def test_export_is_json_and_covers_every_command() -> None:
    """The export is plain JSON and lists every registered method with both schemas."""
    doc = json.loads(json.dumps(export()))
    assert sorted(REGISTRY) == sorted(doc["commands"])
    for name, command in doc["commands"].items():
        assert {"params", "result", "summary", "served_by"} <= command.keys(), name
    assert {"personad.v1.msgpack", "personad.v1.json"} == set(doc["subprotocols"])
    assert -32001 == doc["errors"]["TARGET_OFFLINE"]["code"]


def test_hello_schema_requires_protocol_and_kind() -> None:
    """The hello params schema says what a client must send."""
    hello = export()["commands"]["hello"]["params"]
    assert {"protocol", "kind"} == set(hello["required"])


def test_importing_protocol_stays_pure() -> None:
    """`import protocol` pulls in none of asyncio, websockets, aiosqlite, torch."""
    code = (
        "import sys, protocol, protocol.schema, protocol.commands;"
        "print(sorted(m for m in ('asyncio','websockets','aiosqlite','torch','uvloop') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()


def test_persona_daemon_does_not_import_torch() -> None:
    """The persona daemon's modules never import torch (the model lives elsewhere),
    nor numpy until knowledge is used (16 MiB of every idle persona otherwise)."""
    code = (
        "import sys, daemon.persona.daemon, daemon.cli;"
        "print('torch' in sys.modules, 'transformers' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False False False" == out.stdout.strip()
