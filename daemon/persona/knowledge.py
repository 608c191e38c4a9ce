"""persona.knowledge.add / search / prune: the persona's knowledge base.

The SQL and the ranking live brain-side (daemon/brain/knowledge.py); this
module adds the one thing the brain cannot do: ask ``cap:inference`` for
embeddings (``inference.embed``, with the persona's own token, whose
``inference.*@cap:inference`` grant covers it), so the persona process never
loads a model.

**Embedding, and when it happens later.** ``add`` stores the item first (it
is durable before the answer whatever the inference service does), then
embeds it in one call together with up to ``MAX_EMBED_BATCH - 1`` older items
still lacking an embedding (the backfill), so items added while the service
was offline are embedded by the next add that reaches it. ``search`` asks
for the query's embedding while the brain finds the candidates (the two
waits overlap); when the service answered and some candidates still lack
one, it embeds those (up to the same bound), stores them and ranks with
them. Items outside both stay searchable by their words until then.

**Offline.** If ``inference.embed`` fails in any way (service offline, timeout,
model missing, a malformed answer), add answers ``embedded: false`` and search
ranks by full text alone with ``reranked: false``; neither fails.

Who may call: these methods are the persona's own data, so only tokens with a
grant on ``persona:<id>`` (admins, operators) reach them; the bus refuses
other personas (their role grants no ``persona.knowledge.*``). The registry's
token may call ``persona.knowledge.search`` (session recommendations).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from protocol import ErrorCode, RpcError
from protocol.commands import knowledge as k

from ..brain import Brain
from ..brain import knowledge as kb
from ..brain.recall import query_terms
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from .session_dir import SessionDir

__all__ = ["EMBED_DEADLINE_MS", "embed_texts", "register_knowledge_commands"]

log = logging.getLogger("personad.persona.knowledge")

#: How long a call waits for inference.embed before going on without it. The
#: first call after the service starts loads the model (seconds), later ones
#: take milliseconds.
EMBED_DEADLINE_MS = 15_000


async def embed_texts(client: BusClient, texts: list[str]) -> list[list[float]] | None:
    """Unit vectors for ``texts`` from cap:inference, or None if it did not answer usefully."""
    try:
        answer = await client.call(
            "inference.embed", {"texts": texts}, to="cap:inference", deadline_ms=EMBED_DEADLINE_MS
        )
        result = k.EmbedResult.model_validate(answer)
    except RpcError as exc:
        log.info("inference.embed unavailable (%s): going on without embeddings", exc.message)
        return None
    except ValueError as exc:  # pydantic's ValidationError: a malformed answer
        log.warning("inference.embed answered something malformed: %s", exc)
        return None
    if (
        result.model != k.EMBED_MODEL
        or len(result.vectors) != len(texts)
        or any(len(v) != k.EMBED_DIM for v in result.vectors)
    ):
        log.warning(
            "inference.embed answered %d vectors of model %s: ignored", len(result.vectors), result.model
        )
        return None
    return result.vectors


def register_knowledge_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""
    room = k.MAX_EMBED_BATCH - 1

    async def embed_and_store(first: list[str], pending: list[tuple[int, str]]) -> list[list[float]] | None:
        """Embed ``first`` and the pending items in one call; store the items'; ``first``'s vectors."""
        vectors = await embed_texts(client, [*first, *(text for _, text in pending)])
        if vectors is None:
            return None
        items = [
            (item_id, kb.embedding_blob(v))
            for (item_id, _), v in zip(pending, vectors[len(first) :], strict=True)
        ]
        if items:
            await brain.write(kb.store_embeddings_sync, k.EMBED_MODEL, items, time.time())
        return vectors[: len(first)]

    async def add(p: k.KnowledgeAddParams, ctx: CallContext) -> k.KnowledgeAddResult:
        item_id = await brain.write(
            kb.add_sync, p.content, p.context, list(p.tags or []), p.relevance_score, time.time()
        )
        pending: list[tuple[int, str]] = await brain.read(kb.pending_sync, k.EMBED_MODEL, room + 1)
        # The new item first, then the oldest of the rest (it is among them unless the backlog is long).
        mine = [(i, text) for i, text in pending if i == item_id] or [
            (item_id, kb.embedding_text(p.content, p.context))
        ]
        others = [(i, text) for i, text in pending if i != item_id][:room]
        embedded = await embed_and_store([], [*mine, *others]) is not None
        return k.KnowledgeAddResult(id=item_id, embedded=embedded, backfilled=len(others) if embedded else 0)

    async def search(p: k.KnowledgeSearchParams, ctx: CallContext) -> k.KnowledgeSearchResult:
        tags = list(p.tags) if p.tags else None
        # The query's embedding does not depend on the candidates: ask for it
        # while the brain finds them, so the two waits overlap.
        asked = asyncio.create_task(embed_texts(client, [p.query]))
        try:
            candidates: list[kb.Candidate] = await brain.read(
                kb.candidates_sync, p.query, tags, k.EMBED_MODEL, True
            )
        except BaseException:
            asked.cancel()
            raise
        vectors = await asked
        query_vector = vectors[0] if vectors is not None else None
        missing = [c.id for c in candidates if c.embedding is None][:room]
        if query_vector is not None and missing:
            # Candidates added while cap:inference was offline: embed them now (the service
            # just answered), store them, and read the candidates again so one code path ranks.
            pending: list[tuple[int, str]] = await brain.read(kb.pending_sync, k.EMBED_MODEL, room, missing)
            if pending and await embed_and_store([], pending) is not None:
                candidates = await brain.read(kb.candidates_sync, p.query, tags, k.EMBED_MODEL, True)
        ranked = kb.rank(candidates, query_vector, p.limit, has_terms=bool(query_terms(p.query)))
        rows = await brain.read(kb.hits_sync, [s.id for s in ranked])
        hits = [
            k.KnowledgeHit(
                **rows[s.id], score=s.score, text_score=s.text_score, semantic_score=s.semantic_score
            )
            for s in ranked
            if s.id in rows
        ]
        return k.KnowledgeSearchResult(
            hits=hits, reranked=query_vector is not None, candidates=len(candidates)
        )

    async def prune(p: k.KnowledgePruneParams, ctx: CallContext) -> k.KnowledgePruneResult:
        if p.min_relevance is None and p.max_items is None:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                "invalid params: min_relevance: give min_relevance, max_items or both",
                {"field": "min_relevance"},
            )
        removed, remaining = await brain.write(kb.prune_sync, p.min_relevance, p.max_items)
        return k.KnowledgePruneResult(removed=removed, remaining=remaining)

    handlers: dict[str, Callable[..., Awaitable[Any]]] = {
        "persona.knowledge.add": add,
        "persona.knowledge.search": search,
        "persona.knowledge.prune": prune,
    }
    for method, handler in handlers.items():
        dispatcher.register(method, handler)
