"""Methods every persona daemon serves (``to: persona:<id>``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .bus import Empty
from .registry import StrictModel, register


class BusState(StrictModel):
    state: Literal["connecting", "connected", "reconnecting", "closed"]
    url: str
    connected_since: float | None
    reconnects: int = Field(description="successful reconnections since start")


class StatusResult(StrictModel):
    id: str
    name: str
    description: str
    version: str
    pid: int
    started_at: float
    uptime_s: float
    session_dir: str
    capabilities: list[str]
    bus: BusState
    inflight: int = Field(description="requests being handled now")


register(
    "persona.status",
    params=Empty,
    result=StatusResult,
    summary="Identity, uptime, session directory and bus connection of a persona.",
    served_by="persona",
)


class PingResult(StrictModel):
    pong: Literal[True] = True
    time: float


register(
    "persona.ping",
    params=Empty,
    result=PingResult,
    summary="Liveness check of a persona daemon (not of the bus).",
    served_by="persona",
)
