"""docs/methods.md: generated from the registry, current, and with examples that are valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.state import StateDir
from protocol import REGISTRY
from protocol.examples import EXAMPLES
from protocol.reference import REGENERATE, example, render
from protocol.schema import document
from tests.conftest import REPO, run_cli

METHODS_MD = REPO / "docs" / "methods.md"


def test_docs_methods_md_is_current() -> None:
    """docs/methods.md is exactly what the generator prints now (the registry did not drift)."""
    assert METHODS_MD.exists(), f"docs/methods.md is missing: run `{REGENERATE}`"
    assert render() == METHODS_MD.read_text(), (
        f"docs/methods.md is out of date with protocol/commands/: run `{REGENERATE}`"
    )


#: Modules whose params and results are fully described (bus.py and persona.py
#: describe only some members so far: their models are owned elsewhere).
DESCRIBED = {"protocol.commands.brain", "protocol.commands.inference", "protocol.commands.browser"}


def test_every_method_has_a_section_and_every_member_a_description() -> None:
    """Every method has a section; every brain, inference and browser member has a description."""
    text = render()
    for name, command in REGISTRY.items():
        assert f"\n### `{name}`\n" in text, name
        for model in (command.params, command.result):
            if model.__module__ in DESCRIBED or model.__name__ == "HelloParams":
                undocumented = [f for f, info in model.model_fields.items() if not info.description]
                assert [] == undocumented, f"{name}: {model.__name__}"


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_example_is_valid_for_its_method(method: str) -> None:
    """The example request in the reference validates against the method's params model."""
    command = REGISTRY[method]
    required = command.params.model_json_schema().get("required", [])
    assert not required or method in EXAMPLES, f"add an example for {method} to protocol/examples.py"
    message = example(command)
    command.params.model_validate(message.get("params", {}))
    assert ("id" in message) != command.notification


def test_examples_name_only_registered_methods() -> None:
    """A removed or renamed method does not leave a stale example behind."""
    assert set(EXAMPLES) <= set(REGISTRY)


def test_cli_prints_the_schema_and_the_reference(state: StateDir) -> None:
    """`personad schema` prints the JSON Schema document; `--markdown` the reference."""
    done = run_cli(state, "schema")
    assert 0 == done.returncode, done.stderr
    assert document() == json.loads(done.stdout)
    done = run_cli(state, "schema", "--markdown")
    assert 0 == done.returncode, done.stderr
    assert render() == done.stdout
    assert Path(METHODS_MD).read_text() == done.stdout
