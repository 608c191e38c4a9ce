"""Counters for /metrics, rendered in the Prometheus text format (0.0.4).

A dozen counters do not justify the prometheus_client dependency; the format
is a few lines of text: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from collections.abc import Iterable
from typing import Final

#: The grant a token needs to read /metrics (unless the bus runs with
#: --public-metrics). Not under bus.*, so persona tokens do not have it.
METRICS_GRANT: Final = "metrics"


class Metrics:
    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections_total = 0
        self.requests = Counter[str]()  # by outcome: ok / error
        self.errors = Counter[str]()  # by error code name
        self.closed = Counter[str]()  # by close reason
        self.events_delivered = 0

    def render(
        self,
        *,
        uptime: float,
        clients_by_kind: dict[str, int],
        inflight: int,
        version: str,
    ) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                # Integers exactly (no 4.1e+07 rounding), floats round-trip via repr.
                text = str(value) if isinstance(value, int) else repr(float(value))
                lines.append(f"{name}{labels} {text}")

        def label(key: str, value: str) -> str:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            return f'{{{key}="{escaped}"}}'

        metric("personad_bus_info", "gauge", "Bus version.", [(label("version", version), 1)])
        metric("personad_bus_uptime_seconds", "gauge", "Seconds since the bus started.", [("", uptime)])
        metric(
            "personad_bus_clients",
            "gauge",
            "Authenticated connections by client kind.",
            [(label("kind", k), v) for k, v in sorted(clients_by_kind.items())] or [("", 0)],
        )
        metric(
            "personad_bus_connections_total",
            "counter",
            "Connections accepted.",
            [("", self.connections_total)],
        )
        metric(
            "personad_bus_inflight_requests", "gauge", "Routed requests awaiting an answer.", [("", inflight)]
        )
        metric("personad_bus_frames_received_total", "counter", "Frames received.", [("", self.frames_in)])
        metric("personad_bus_frames_sent_total", "counter", "Frames sent.", [("", self.frames_out)])
        metric(
            "personad_bus_received_bytes_total", "counter", "Payload bytes received.", [("", self.bytes_in)]
        )
        metric("personad_bus_sent_bytes_total", "counter", "Payload bytes sent.", [("", self.bytes_out)])
        metric(
            "personad_bus_requests_total",
            "counter",
            "Requests answered, by outcome.",
            [(label("outcome", k), v) for k, v in sorted(self.requests.items())] or [("", 0)],
        )
        metric(
            "personad_bus_errors_total",
            "counter",
            "Error answers, by code.",
            [(label("code", k), v) for k, v in sorted(self.errors.items())] or [("", 0)],
        )
        metric(
            "personad_bus_disconnects_total",
            "counter",
            "Connections closed, by reason.",
            [(label("reason", k), v) for k, v in sorted(self.closed.items())] or [("", 0)],
        )
        metric(
            "personad_bus_events_delivered_total",
            "counter",
            "Event notifications delivered.",
            [("", self.events_delivered)],
        )
        metric("process_resident_memory_bytes", "gauge", "Resident memory.", [("", _rss_bytes())])
        metric(
            "process_max_resident_memory_bytes",
            "gauge",
            "Peak resident memory.",
            [("", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)],
        )
        return "\n".join(lines) + "\n"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
