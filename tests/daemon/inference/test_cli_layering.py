"""The CLI's dependencies run one way: daemon.cli imports the subsystems' verbs, never the reverse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import daemon

PACKAGE = Path(daemon.__file__).parent


def test_role_cli_modules_build_their_verbs_without_daemon_cli() -> None:
    """Each module in ROLE_CLI_MODULES adds its verbs (with the common options) on its own."""
    code = """
import argparse, sys
import daemon.browser.cli, daemon.inference.cli
parser = argparse.ArgumentParser(prog="personad")
verbs = parser.add_subparsers(dest="verb")
handlers = {}
for module in (daemon.browser.cli, daemon.inference.cli):
    handlers.update(module.add_verbs(lambda name, help_: verbs.add_parser(name, help=help_)))
args = parser.parse_args(["adapter", "list", "--state-dir", "/nowhere"])
print(sorted(handlers), args.state_dir, "daemon.cli" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "['adapter', 'browser', 'extension', 'inference'] /nowhere False" == out.stdout.strip()


def _imports_of(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def test_no_subsystem_imports_the_top_level_cli() -> None:
    """Only the entry point (daemon/__main__.py) imports daemon.cli."""
    offenders = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py" and path != PACKAGE / "cli.py" and "daemon.cli" in _imports_of(path)
    )
    assert [] == offenders
