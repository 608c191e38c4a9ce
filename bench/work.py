#!/usr/bin/env python
"""Personas at work, every benchmark in one run: analytics, knowledge, plugins, sessions.

    .venv/bin/python bench/work.py [--quick] [--only analytics,knowledge,plugins,sessions]

Each part is its own script (bench/work_<part>.py, which says what it
measures, against what baseline, and its target) and runs here as a child
process, one after the other so that no part measures another's load. Their
output streams as it comes; at the end a table says which part met its
target. Exit status 0 when every part that ran did.

``--quick`` runs each at a size that finishes in a few minutes on a laptop
(fewer records, items, calls); the targets are stated for the full sizes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: part -> (full-size arguments, --quick arguments)
PARTS: dict[str, tuple[list[str], list[str]]] = {
    "analytics": ([], ["--records", "2000", "--calls", "100"]),
    "knowledge": ([], ["--quick"]),
    "plugins": ([], ["--runs", "10"]),
    "sessions": ([], ["--personas", "200", "--calls", "100"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (targets are for the full ones)")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    args = parser.parse_args()
    chosen = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    outcome: dict[str, tuple[int, float]] = {}
    for part in chosen:
        full, quick = PARTS[part]
        argv = [sys.executable, str(HERE / f"work_{part}.py"), *(quick if args.quick else full)]
        print(f"\n=== {part}: {' '.join(argv[1:])}", flush=True)
        started = time.monotonic()
        status = subprocess.run(argv, check=False).returncode
        outcome[part] = (status, time.monotonic() - started)
    print("\npart        result  seconds")
    for part, (status, seconds) in outcome.items():
        print(f"{part:<11} {'ok' if status == 0 else 'FAIL':<7} {seconds:7.1f}")
    return 0 if all(status == 0 for status, _ in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
