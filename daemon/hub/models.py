"""The models PersonaHub works with, reached through the bus: generation, embeddings, and how many serve.

One home for the three calls the service, ``personad hub`` and the
benchmark all make, so they ask the same way: ``inference.generate`` and
``inference.embed`` on ``cap:inference`` (the bus picks the least busy
provider), and ``bus.clients`` to count the providers.
"""

from __future__ import annotations

from typing import Final

from protocol.commands.inference import GenerateParams, GenerateResult
from protocol.commands.knowledge import MAX_EMBED_BATCH

from ..client import BusClient

__all__ = ["DEADLINE_MS", "BusModels"]

#: How long one request may wait for a seat and run: a full batch of long answers on a busy CPU.
DEADLINE_MS: Final = 300_000


class BusModels:
    """generate, embed and providers through ``client``."""

    def __init__(self, client: BusClient) -> None:
        self.client = client

    async def generate(self, params: GenerateParams) -> GenerateResult:
        answer = await self.client.call(
            "inference.generate",
            params.model_dump(mode="json", exclude_none=True),
            to="cap:inference",
            deadline_ms=DEADLINE_MS,
        )
        return GenerateResult.model_validate(answer)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit vectors for ``texts``, in calls of at most MAX_EMBED_BATCH."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), MAX_EMBED_BATCH):
            answer = await self.client.call(
                "inference.embed",
                {"texts": texts[start : start + MAX_EMBED_BATCH]},
                to="cap:inference",
                deadline_ms=DEADLINE_MS,
            )
            vectors.extend(answer["vectors"])
        return vectors

    async def providers(self) -> int:
        """The inference services on the bus now."""
        answer = await self.client.call("bus.clients", {"capability": "inference"})
        return len(answer["clients"])
