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
for the query's embedding while the brain finds the full-text candidates
(the two waits overlap); when the service answered and some candidates still
lack one, it embeds those (up to the same bound), stores them and ranks with
them. Items outside both stay searchable by their words until then.

**The vector index.** The semantic candidates come from a
:class:`~daemon.brain.knowledge_index.VectorIndex` over every embedded item,
held by :class:`LiveIndex`: built from the brain on the first search that
has a query embedding, then kept in step by this module, which is the only
writer of the brain's knowledge (every stored embedding is added to it, every
pruned id removed). Changes made while the build reads the table are
journalled and replayed onto it. Nothing is persisted: a restarted daemon
builds it again from the table.

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
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode, RpcError
from protocol.commands import knowledge as k

from ..brain import Brain
from ..brain import knowledge as kb
from ..brain.recall import query_terms
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..errors import Busy
from .session_dir import SessionDir

if TYPE_CHECKING:  # imported on the first search: it brings numpy (16 MiB)
    from ..brain.knowledge_index import VectorIndex

__all__ = [
    "EMBED_DEADLINE_MS",
    "SEMANTIC_CANDIDATES",
    "TAGGED_NEAREST",
    "LiveIndex",
    "embed_texts",
    "live_index",
    "register_knowledge_commands",
]

log = logging.getLogger("personad.persona.knowledge")

#: How long a call waits for inference.embed before going on without it. The
#: first call after the service starts loads the model (seconds), later ones
#: take milliseconds.
EMBED_DEADLINE_MS = 15_000

#: Semantic candidates a search adds to the full-text ones (those not already among them).
SEMANTIC_CANDIDATES = 100
#: With a tag filter, the nearest items asked of the index (which knows no tags), of which
#: the first SEMANTIC_CANDIDATES carrying the tags are kept.
TAGGED_NEAREST = 1_000


def live_index(brain: Brain) -> LiveIndex | None:
    """The index kept for ``brain`` by the knowledge methods registered on it (for tests and figures)."""
    return _LIVE.get(brain)


class LiveIndex:
    """The persona's vector index: built on first use, then kept in step with this daemon's writes."""

    def __init__(self) -> None:
        self._index: VectorIndex | None = None
        self._lock = asyncio.Lock()
        # While a build reads the table, changes committed meanwhile may or may not be in its
        # snapshot: they are noted here, in order, and replayed (both operations are idempotent).
        self._journal: list[tuple[bool, Any]] | None = None
        #: Items may lack an embedding (added offline, or by another model): searches embed the
        #: oldest of them while this holds. Unknown at start, so True; cleared when none is left.
        self.backlog = True

    @property
    def built(self) -> VectorIndex | None:
        """The index if it has been built (for tests and figures)."""
        return self._index

    async def get(self, brain: Brain) -> VectorIndex:
        """The index, built from ``brain`` (the one whose writes it follows) on the first call."""
        if self._index is not None:
            return self._index
        async with self._lock:
            if self._index is None:
                from ..brain.knowledge_index import load_sync

                self._journal = []
                try:
                    index: VectorIndex = await brain.read(load_sync, k.EMBED_MODEL, k.EMBED_DIM)
                    for upsert, arg in self._journal:
                        if upsert:
                            index.upsert(arg)
                        else:
                            index.remove(arg)
                    self._index = index
                finally:
                    self._journal = None
                log.info("knowledge index built: %d items, %.1f MB", len(index), index.nbytes / 1e6)
            return self._index

    def stored(self, items: list[tuple[int, bytes]]) -> None:
        """Embeddings (by the current model) were just stored."""
        if self._index is not None:
            self._index.upsert(items)
        elif self._journal is not None:
            self._journal.append((True, items))

    def removed(self, ids: list[int]) -> None:
        """Items were just deleted."""
        if self._index is not None:
            self._index.remove(ids)
        elif self._journal is not None:
            self._journal.append((False, ids))


class _Availability:
    """Says once that inference.embed went away and once that it came back, not once per call
    (a persona searching while the inference service is down would otherwise log every search)."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, reason: str) -> None:
        if self.down:
            log.debug("inference.embed still unavailable (%s)", reason)
            return
        self.down = True
        log.info("inference.embed unavailable (%s): going on without embeddings until it answers", reason)

    def answered(self) -> None:
        if self.down:
            self.down = False
            log.info("inference.embed answers again: searches are re-ranked by meaning")


async def embed_texts(client: BusClient, texts: list[str], said: _Availability) -> list[list[float]] | None:
    """Unit vectors for ``texts`` from cap:inference, or None if it did not answer usefully."""
    try:
        answer = await client.call(
            "inference.embed", {"texts": texts}, to="cap:inference", deadline_ms=EMBED_DEADLINE_MS
        )
        result = k.EmbedResult.model_validate(answer)
    except RpcError as exc:
        said.failed(exc.message)
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
    said.answered()
    return result.vectors


#: Each open brain's index (weak: it goes with the brain; the index holds no reference to it).
_LIVE: weakref.WeakKeyDictionary[Brain, LiveIndex] = weakref.WeakKeyDictionary()


def register_knowledge_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""
    room = k.MAX_EMBED_BATCH - 1
    live = _LIVE[brain] = LiveIndex()
    availability = _Availability()

    async def embed_and_store(first: list[str], pending: list[tuple[int, str]]) -> list[list[float]] | None:
        """Embed ``first`` and the pending items in one call; store the items'; ``first``'s vectors."""
        vectors = await embed_texts(client, [*first, *(text for _, text in pending)], availability)
        if vectors is None:
            return None
        items = [
            (item_id, kb.embedding_blob(v))
            for (item_id, _), v in zip(pending, vectors[len(first) :], strict=True)
        ]
        if items:
            stored: list[int] = await brain.write(kb.store_embeddings_sync, k.EMBED_MODEL, items, time.time())
            kept = set(stored)
            live.stored([(item_id, blob) for item_id, blob in items if item_id in kept])
        return vectors[: len(first)]

    async def add(p: k.KnowledgeAddParams, ctx: CallContext) -> k.KnowledgeAddResult:
        item_id = await brain.write(
            kb.add_sync, p.content, p.context, list(p.tags or []), p.relevance_score, time.time()
        )
        # The item is stored: from here on the brain's reader being busy must not fail the
        # call (its caller would add it again). The backlog is then looked at later.
        busy = False
        # Looking for older items without a vector reads every row's embedding column (there is
        # no index on it), so only while some may remain.
        pending: list[tuple[int, str]] = []
        if live.backlog:
            try:
                pending = await brain.read(kb.pending_sync, k.EMBED_MODEL, room + 1)
            except Busy:
                busy = True
        # The new item first, then the oldest of the rest (it is among them unless the backlog is long).
        mine = [(i, text) for i, text in pending if i == item_id] or [
            (item_id, kb.embedding_text(p.content, p.context))
        ]
        others = [(i, text) for i, text in pending if i != item_id][:room]
        embedded = await embed_and_store([], [*mine, *others]) is not None
        # Items remain without a vector unless this call embedded all there were.
        live.backlog = busy or not embedded or len(pending) > room
        return k.KnowledgeAddResult(id=item_id, embedded=embedded, backfilled=len(others) if embedded else 0)

    async def catch_up(candidates: list[kb.Candidate]) -> bool:
        """Embed candidates lacking a vector, then the oldest of the backlog (up to ``room`` in all).

        Called once the service has just answered a search. Full-text candidates first (the
        search ranks with them); then, while items added offline may remain, the oldest of
        them, so that the index comes to hold every item. True if candidates were embedded.
        """
        missing = [c.id for c in candidates if c.embedding is None][:room]
        todo: list[tuple[int, str]] = (
            await brain.read(kb.pending_sync, k.EMBED_MODEL, room, missing) if missing else []
        )
        drained = False
        if live.backlog and len(todo) < room:
            chosen = {item_id for item_id, _ in todo}
            oldest: list[tuple[int, str]] = await brain.read(kb.pending_sync, k.EMBED_MODEL, room + 1)
            rest = [(item_id, text) for item_id, text in oldest if item_id not in chosen]
            drained = len(rest) <= room - len(todo)
            todo += rest[: room - len(todo)]
        if not todo:
            live.backlog = live.backlog and not drained
            return False
        if await embed_and_store([], todo) is None:
            return False
        if drained:
            live.backlog = False
        return bool(missing)

    async def semantic(
        query_vector: list[float], tags: list[str] | None, known: list[kb.Candidate]
    ) -> list[kb.Candidate]:
        """The items nearest the query in the whole base that are not among ``known``."""
        index = await live.get(brain)
        nearest = await asyncio.to_thread(
            index.top, query_vector, TAGGED_NEAREST if tags else SEMANTIC_CANDIDATES
        )
        seen = {c.id for c in known}
        ids = [item_id for item_id, _ in nearest if item_id not in seen]
        rows: list[kb.Candidate] = await brain.read(
            kb.rows_sync, ids, tags, k.EMBED_MODEL, SEMANTIC_CANDIDATES
        )
        return rows

    async def search(p: k.KnowledgeSearchParams, ctx: CallContext) -> k.KnowledgeSearchResult:
        tags = list(p.tags) if p.tags else None
        # The query's embedding does not depend on the full-text candidates: ask for it
        # while the brain finds them, so the two waits overlap.
        asked = asyncio.create_task(embed_texts(client, [p.query], availability))
        try:
            candidates: list[kb.Candidate] = await brain.read(
                kb.candidates_sync, p.query, tags, k.EMBED_MODEL, False
            )
        except BaseException:
            asked.cancel()
            raise
        vectors = await asked
        query_vector = vectors[0] if vectors is not None else None
        if query_vector is not None:
            if await catch_up(candidates):
                candidates = await brain.read(kb.candidates_sync, p.query, tags, k.EMBED_MODEL, False)
            candidates = [*candidates, *await semantic(query_vector, tags, candidates)]
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
        live.removed(removed)
        return k.KnowledgePruneResult(removed=len(removed), remaining=remaining)

    handlers: dict[str, Callable[..., Awaitable[Any]]] = {
        "persona.knowledge.add": add,
        "persona.knowledge.search": search,
        "persona.knowledge.prune": prune,
    }
    for method, handler in handlers.items():
        dispatcher.register(method, handler)
