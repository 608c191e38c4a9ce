"""The hub's figures as Prometheus text (format 0.0.4), for ``/metrics`` (``hub serve --metrics``).

The same figures as ``hub.status``: per job (the newest 100 the service
knows), its slots (done, made, failed), throughput, retries, and, once
checked, the quality scores; the number of jobs, the service's CPU and
memory. A few lines of text; no client library needed.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["render_metrics", "serve_metrics"]


class _Job(Protocol):
    #: The quality scores of a finished job (jobs.Scores), None before.
    scores: Any

    def status(self) -> Any: ...


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(jobs: Sequence[_Job], *, total: int | None = None) -> str:
    """The figures of ``jobs`` (the newest, as the service passes them), and ``total``: all
    the jobs the service knows (default: ``len(jobs)``)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = str(value) if isinstance(value, int) else repr(float(value))
            lines.append(f"{name}{labels} {text}")

    statuses = [job.status() for job in jobs]
    scores = {status.job_id: job.scores for status, job in zip(statuses, jobs, strict=True)}

    def per_job(pick: Any) -> list[tuple[str, float]]:
        out = []
        for status in statuses:
            value = pick(status)
            if value is not None:
                out.append((f'{{job="{_label(status.job_id)}",state="{status.state}"}}', value))
        return out

    known = len(statuses) if total is None else total
    metric("personad_hub_jobs", "gauge", "Jobs the service knows.", [("", known)])
    metric("personad_hub_slots_total", "gauge", "Slots in a job's plan.", per_job(lambda s: s.figures.total))
    metric("personad_hub_slots_done", "gauge", "Slots finished.", per_job(lambda s: s.figures.done))
    metric("personad_hub_personas_made", "gauge", "Personas made.", per_job(lambda s: s.figures.made))
    metric("personad_hub_slots_failed", "gauge", "Slots that gave up.", per_job(lambda s: s.figures.failed))
    metric("personad_hub_retries", "counter", "Requests sent again.", per_job(lambda s: s.figures.retries))
    metric(
        "personad_hub_rate",
        "gauge",
        "Slots finished per second (last 30 s).",
        per_job(lambda s: s.figures.rate),
    )
    metric(
        "personad_hub_tokens", "counter", "Completion tokens generated.", per_job(lambda s: s.figures.tokens)
    )
    metric(
        "personad_hub_in_flight",
        "gauge",
        "Generate requests out now.",
        per_job(lambda s: s.figures.in_flight),
    )
    metric("personad_hub_kept", "gauge", "Personas in a finished job's output.", per_job(lambda s: s.kept))
    figures = {
        "coherence": "share of personas whose attributes agree with their text",
        "authenticity": "mean authenticity score",
        "diversity_spread": "mean pairwise cosine distance",
        "diversity_entropy": "normalised cluster entropy",
        "cultural_flags": "balance and stereotype flags",
    }
    for name, help_ in figures.items():
        metric(
            f"personad_hub_quality_{name}",
            "gauge",
            f"A finished job's {help_}.",
            per_job(
                lambda s, name=name: None if scores[s.job_id] is None else getattr(scores[s.job_id], name)
            ),
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    metric(
        "personad_hub_cpu_seconds",
        "counter",
        "CPU seconds (user + system).",
        [("", usage.ru_utime + usage.ru_stime)],
    )
    metric("personad_hub_max_rss_bytes", "gauge", "Peak resident memory.", [("", usage.ru_maxrss * 1024)])
    return "\n".join(lines) + "\n"


async def serve_metrics(
    host: str, port: int, *, render: Callable[[], str], bound: Callable[[str, int], None]
) -> None:
    """Answer ``GET /metrics`` with ``render()`` on host:port until cancelled (one request per connection).

    A request line must come within 5 s and fit asyncio's 64 KiB line limit;
    anything else gets 404. ``bound(host, port)`` is told where it listens.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            ok = request.split(b" ")[:2] == [b"GET", b"/metrics"]
            body = render().encode() if ok else b"not found\n"
            head = b"HTTP/1.1 200 OK\r\n" if ok else b"HTTP/1.1 404 Not Found\r\n"
            writer.write(
                head
                + b"Content-Type: text/plain; version=0.0.4\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # a client that went away, said nothing, or sent an endless line
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    where = server.sockets[0].getsockname()
    bound(where[0], where[1])
    async with server:
        await server.serve_forever()
