"""Every curl example of README.md and docs/http.md, run with bash against real processes.

An example is a ```sh block right after the line ``<!-- http-example -->``; the ```text block that
follows it, if any, is what it prints. The comparison is loose where the output cannot be known in
advance: each line of the text block must match a line of the output, in order (other output lines
may come between), and ``…`` in it stands for anything. Everything else is compared exactly, so an
example that drifts from what the bus answers fails here.

The processes are the session's bus and SmolLM2 inference service (``chat_services``), the demo
persona (as in README.md) and a registry; the examples get ``PERSONAD_URL_HTTP`` and
``PERSONAD_TOKEN`` (the admin token) as a reader would set them, and ``personad`` on the PATH with the
session's state folder and bus.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, WAIT, ChatServices, Proc

pytestmark = pytest.mark.slow

DOCS = ("README.md", "docs/http.md")
_EXAMPLE = re.compile(
    r"^<!-- http-example -->\n```sh\n(?P<script>.*?)^```\n(?:\n```text\n(?P<expected>.*?)^```\n)?",
    re.M | re.S,
)


@dataclass(frozen=True)
class Example:
    doc: str
    line: int
    script: str
    expected: str | None

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text("utf-8")
        for match in _EXAMPLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Example(doc, line, match.group("script"), match.group("expected")))
    return found


def line_matches(wanted: str, line: str) -> bool:
    return re.fullmatch(".*?".join(re.escape(part) for part in wanted.split("…")), line) is not None


def unmatched(expected: str, output: str) -> str | None:
    """The first expected line with no match after the previous one's, or None when all match."""
    lines = output.splitlines()
    at = 0
    for wanted in (w for w in expected.splitlines() if w.strip()):
        while at < len(lines) and not line_matches(wanted, lines[at]):
            at += 1
        if at == len(lines):
            return wanted
        at += 1
    return None


def test_the_docs_have_their_examples() -> None:
    found = examples()
    assert {"README.md", "docs/http.md"} == {e.doc for e in found}
    assert sum(e.script.count("curl ") for e in found if e.doc == "README.md") in range(3, 5)
    for example in found:
        assert "curl" in example.script, example.name
        assert example.expected, f"{example.name}: no ```text block says what it prints"
    # A marker not followed by a sh block would silently test nothing.
    for doc in DOCS:
        text = (REPO / doc).read_text("utf-8")
        assert text.count("<!-- http-example -->") == len([e for e in found if e.doc == doc]), doc


def test_unmatched_is_loose_only_where_the_doc_says_so() -> None:
    assert unmatched('{"a":…,"b":2}\n503\n', 'noise\n{"a":{"x":1},"b":2}\nmore\n503\n') is None
    assert '{"a":…,"b":3}' == unmatched('{"a":…,"b":3}\n', '{"a":1,"b":2}\n')
    assert "{}" == unmatched("503\n{}\n", "{}\n503\n")  # in order


@pytest.fixture(scope="module")
def env(chat_services: ChatServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """What a reader has: a bus with the demo persona, the registry and inference; the admin token."""
    http = chat_services.url.replace("ws://", "http://")
    token = chat_services.state.admin_token  # type: ignore[attr-defined]
    started: list[Proc] = []

    def call(client: httpx.Client, target: str, method: str, params: dict[str, Any] | None = None) -> Any:
        answer = client.post(f"/v1/call/{target}/{method}", json=params)
        return answer.json()

    with httpx.Client(base_url=http, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT) as client:
        on_bus = {c["id"] for c in call(client, "bus", "bus.clients")["result"]["clients"]}
        if "persona:demo" not in on_bus:  # another module of the session may have started it
            demo = REPO / "config" / "personas" / "demo.toml"
            started.append(
                chat_services.start_persona("demo", name="Ada", description=_toml_value(demo, "description"))
            )
        registries = call(client, "bus", "bus.clients", {"capability": "registry"})["result"]["clients"]
        if not registries:
            registry = chat_services.start("registry")  # imports the demo from the config folder
            registry.wait_for_line(r"serving cap:registry")
            chat_services.drain(registry)
            started.append(registry)
        known = call(client, "cap:registry", "persona.get", {"persona_id": "demo"})
        if "error" in known:
            profile = {"id": "demo", "name": "Ada", "role": "assistant", "status": "active"}
            assert "result" in call(client, "cap:registry", "persona.create", {"profile": profile})
    path = f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    yield {
        "PATH": path,
        "HOME": str(tmp_path_factory.mktemp("home")),
        "LANG": "C.UTF-8",
        "PERSONAD_URL_HTTP": http,
        "PERSONAD_TOKEN": token,
        "PERSONAD_URL": chat_services.url,
        "PERSONAD_STATE_DIR": str(chat_services.state.root),
    }
    for proc in reversed(started):
        proc.stop()


def _toml_value(path: Path, key: str) -> str:
    import tomllib

    value = tomllib.loads(path.read_text("utf-8"))[key]
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.name)
def test_the_example_runs_and_prints_what_the_doc_says(
    example: Example, env: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", example.script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT * 8,
    )
    assert 0 == done.returncode, f"{example.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert example.expected is not None
    missing = unmatched(example.expected, done.stdout)
    assert missing is None, f"{example.name}: no line matches {missing!r} in:\n{done.stdout}"
