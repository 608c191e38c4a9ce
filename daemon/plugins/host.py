"""A persona's installed plugins: add, list, remove, run, and the channel's host side.

Installed plugins live in the persona's folder, ``<session>/plugins/<id>/``
(a copy of the signed folder, signature included), and are verified against
the trusted keys when added and again before every run: a file changed after
the add, or a key the operator has since untrusted, refuses the run. Every
run appends one line to ``<session>/plugins/runs.jsonl`` (plugin, version,
when, duration, ok or what stopped it, channel requests); persona.plugins
and analytics compute a plugin's measured impact from those lines.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..brain import Brain
from ..files import atomic_write
from .errors import PluginError
from .manifest import PERMISSIONS, Manifest, load_manifest
from .sandbox import ChannelDenied, RunOutcome, run_sandboxed
from .signing import list_files, verify_folder
from .trust import TrustStore

__all__ = ["RUNS_FILE", "InstalledPlugin", "PluginHost", "PluginStats"]

RUNS_FILE: Final = "runs.jsonl"
ARTIFACT_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_ARTIFACT_BYTES: Final = 1024 * 1024
MAX_DOCUMENT_BYTES: Final = 1024 * 1024
MAX_DOCUMENTS: Final = 500
MAX_RECALL: Final = 50
MAX_CHAT_CHARS: Final = 8000
MAX_CHAT_TOKENS: Final = 512
#: Brain exports are the whole brain: read_documents does not reach them.
PRIVATE_ARTIFACTS: Final = ("exports",)

#: chat(plugin_id, message, max_tokens) -> reply text: the persona's own chat, asked by the plugin.
Chat = Callable[[str, str, int], Awaitable[str]]

#: method -> the permission it needs.
CHANNEL_METHODS: Final[dict[str, str]] = {
    "chat": "chat",
    "read_memories": "read_memories",
    "write_memories": "write_memories",
    "list_documents": "read_documents",
    "read_document": "read_documents",
    "write_artifact": "write_artifacts",
}


@dataclass(frozen=True)
class PluginStats:
    runs: int
    failures: int
    mean_duration_s: float | None
    last_run_at: float | None
    stopped_by: dict[str, int]


@dataclass(frozen=True)
class InstalledPlugin:
    manifest: Manifest
    signer: str
    folder: Path
    stats: PluginStats


class PluginHost:
    def __init__(
        self, plugins_dir: Path, artifacts: Path, state_root: Path, brain: Brain, chat: Chat
    ) -> None:
        self.plugins_dir = plugins_dir
        self.artifacts = artifacts
        self.trust = TrustStore.for_state(state_root)
        self.brain = brain
        self.chat = chat
        # One add/remove at a time: both rename folders in plugins_dir.
        self._lock = asyncio.Lock()

    # -- install ---------------------------------------------------------------

    async def add(self, source: Path, *, replace: bool = False) -> InstalledPlugin:
        """Verify ``source`` (signature, trust, manifest) and copy it in as ``plugins/<id>/``."""
        async with self._lock:
            try:
                return await asyncio.to_thread(self._add, source, replace)
            except OSError as exc:
                # A file we may not read, or one that went away mid-copy: the folder's problem.
                raise PluginError(
                    "bad_folder", f"cannot read {exc.filename or source}: {exc.strerror}"
                ) from None

    def _add(self, source: Path, replace: bool) -> InstalledPlugin:
        source = source.absolute()
        if not source.is_dir() or source.is_symlink():
            raise PluginError("bad_folder", f"{source} is not a plugin folder")
        signer = verify_folder(source, self.trust.keys())
        manifest = load_manifest(source)
        target = self.plugins_dir / manifest.id
        if target.exists() and not replace:
            raise PluginError("exists", f"plugin {manifest.id!r} is installed; remove it or pass replace")
        staging = Path(tempfile.mkdtemp(prefix=".add-", dir=self.plugins_dir))
        try:
            copy = staging / manifest.id
            copy.mkdir(mode=0o700)
            for rel in [*list_files(source), "signature.json"]:
                dest = copy / rel
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.copyfile(source / rel, dest, follow_symlinks=False)
            # What we copied is what we verify: the source may change under us.
            verify_folder(copy, {signer.key})
            if load_manifest(copy) != manifest:
                raise PluginError("modified", f"{source} changed while it was being added")
            if target.exists():
                shutil.rmtree(target)
            copy.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return InstalledPlugin(manifest, signer.key, target, self._stats().get(manifest.id, _NO_RUNS))

    async def remove(self, plugin_id: str) -> bool:
        """Uninstall; False when no such plugin is installed. Its run history stays."""
        async with self._lock:
            target = self.plugins_dir / plugin_id
            if not _is_plugin_id(plugin_id) or not target.is_dir():
                return False
            await asyncio.to_thread(shutil.rmtree, target)
            return True

    async def installed(self) -> list[InstalledPlugin]:
        return await asyncio.to_thread(self._installed)

    def _installed(self) -> list[InstalledPlugin]:
        stats = self._stats()
        found = []
        for folder in sorted(self.plugins_dir.iterdir()):
            if not folder.is_dir() or not _is_plugin_id(folder.name):
                continue
            try:
                manifest = load_manifest(folder)
                signer = json.loads((folder / "signature.json").read_bytes())["key"]
            except (PluginError, OSError, ValueError, KeyError):
                continue  # half-removed or damaged: run would refuse it, the list skips it
            found.append(InstalledPlugin(manifest, str(signer), folder, stats.get(manifest.id, _NO_RUNS)))
        return found

    # -- run -------------------------------------------------------------------

    async def run(self, plugin_id: str, payload: Any) -> tuple[Manifest, RunOutcome]:
        """Verify the installed copy again, run it sandboxed, record the run."""
        folder = self.plugins_dir / plugin_id
        if not _is_plugin_id(plugin_id) or not folder.is_dir():
            raise PluginError("unknown_plugin", f"no plugin {plugin_id!r} is installed")
        await asyncio.to_thread(verify_folder, folder, self.trust.keys())
        manifest = await asyncio.to_thread(load_manifest, folder)
        started_at = time.time()
        outcome = await run_sandboxed(folder, manifest, payload, self._channel(manifest))
        await asyncio.to_thread(self._record, manifest, started_at, outcome)
        return manifest, outcome

    def _record(self, manifest: Manifest, started_at: float, outcome: RunOutcome) -> None:
        line = {
            "plugin_id": manifest.id,
            "version": manifest.version,
            "started_at": round(started_at, 3),
            "duration_s": outcome.duration_s,
            "ok": outcome.ok,
            "stopped_by": outcome.stopped_by,
            "calls": outcome.calls,
            "denied": outcome.denied,
        }
        with open(self.plugins_dir / RUNS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def _stats(self) -> dict[str, PluginStats]:
        runs: dict[str, list[dict[str, Any]]] = {}
        try:
            with open(self.plugins_dir / RUNS_FILE, encoding="utf-8") as f:
                for line in f:
                    try:
                        run = json.loads(line)
                        runs.setdefault(str(run["plugin_id"]), []).append(run)
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash mid-write
        except FileNotFoundError:
            return {}
        stats = {}
        for plugin_id, items in runs.items():
            stopped: dict[str, int] = {}
            for run in items:
                if run.get("stopped_by"):
                    stopped[run["stopped_by"]] = stopped.get(run["stopped_by"], 0) + 1
            stats[plugin_id] = PluginStats(
                runs=len(items),
                failures=sum(1 for r in items if not r.get("ok")),
                mean_duration_s=round(sum(float(r["duration_s"]) for r in items) / len(items), 6),
                last_run_at=max(float(r["started_at"]) for r in items),
                stopped_by=stopped,
            )
        return stats

    # -- the channel's host side -------------------------------------------------

    def _channel(self, manifest: Manifest) -> Callable[[str, dict[str, Any]], Awaitable[Any]]:
        async def handle(method: str, params: dict[str, Any]) -> Any:
            needed = CHANNEL_METHODS.get(method)
            if needed is None:
                raise ChannelDenied("unknown_method", f"the channel has no method {method!r}")
            if needed not in manifest.permissions:
                raise ChannelDenied(
                    "permission_denied",
                    f"{method} needs the {needed} permission, which the manifest does not grant",
                )
            try:
                return await getattr(self, f"_ch_{method}")(manifest, params)
            except (KeyError, TypeError, ValueError) as exc:
                raise ChannelDenied("bad_request", f"{method}: {exc}") from None

        return handle

    async def _ch_chat(self, manifest: Manifest, params: dict[str, Any]) -> Any:
        message = _text(params, "message", MAX_CHAT_CHARS)
        max_tokens = params.get("max_tokens", 256)
        if type(max_tokens) is not int or not 1 <= max_tokens <= MAX_CHAT_TOKENS:
            raise ValueError(f"max_tokens: an integer from 1 to {MAX_CHAT_TOKENS}")
        return {"reply": await self.chat(manifest.id, message, max_tokens)}

    async def _ch_read_memories(self, manifest: Manifest, params: dict[str, Any]) -> Any:
        query = _text(params, "query", 1024, allow_empty=True)
        limit = params.get("limit", 10)
        if type(limit) is not int or not 1 <= limit <= MAX_RECALL:
            raise ValueError(f"limit: an integer from 1 to {MAX_RECALL}")
        hits = await self.brain.recall(query, limit=limit)
        return {
            "memories": [
                {"id": h.id, "content": h.content, "kind": h.kind, "created_at": h.created_at.isoformat()}
                for h in hits
            ]
        }

    async def _ch_write_memories(self, manifest: Manifest, params: dict[str, Any]) -> Any:
        content = _text(params, "content", 64 * 1024)
        context = params.get("context")
        if context is not None and not isinstance(context, dict):
            raise ValueError("context: an object or null")
        return {"id": await self.brain.remember(content, context=context, source=f"plugin:{manifest.id}")}

    async def _ch_list_documents(self, manifest: Manifest, params: dict[str, Any]) -> Any:
        return {"names": await asyncio.to_thread(self._documents)}

    def _documents(self) -> list[str]:
        names = []
        for path in sorted(self.artifacts.rglob("*")):
            rel = path.relative_to(self.artifacts)
            if rel.parts[0] in PRIVATE_ARTIFACTS or path.is_symlink() or not path.is_file():
                continue
            names.append(rel.as_posix())
            if len(names) >= MAX_DOCUMENTS:
                break
        return names

    async def _ch_read_document(self, manifest: Manifest, params: dict[str, Any]) -> Any:
        name = _text(params, "name", 400)
        if name not in await asyncio.to_thread(self._documents):
            raise ValueError(f"name: {name!r} is not a document here (see list_documents)")
        path = self.artifacts / name
        if (await asyncio.to_thread(path.stat)).st_size > MAX_DOCUMENT_BYTES:
            raise ValueError(f"name: {name} is over {MAX_DOCUMENT_BYTES} bytes")
        data = await asyncio.to_thread(path.read_bytes)
        return {"content": data.decode("utf-8", "replace")}

    async def _ch_write_artifact(self, manifest: Manifest, params: dict[str, Any]) -> Any:
        name = _text(params, "name", 100)
        content = _text(params, "content", MAX_ARTIFACT_BYTES, allow_empty=True)
        if not ARTIFACT_NAME.match(name) or name in (".", ".."):
            raise ValueError("name: letters, digits, '.', '_' and '-', starting with a letter or digit")
        if len(content.encode()) > MAX_ARTIFACT_BYTES:
            raise ValueError(f"content: over {MAX_ARTIFACT_BYTES} bytes")
        folder = self.artifacts / "plugins" / manifest.id
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(atomic_write, folder / name, content.encode(), mode=0o600)
        return {"path": f"plugins/{manifest.id}/{name}"}


_NO_RUNS = PluginStats(runs=0, failures=0, mean_duration_s=None, last_run_at=None, stopped_by={})


def _is_plugin_id(value: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", value) is not None


def _text(params: dict[str, Any], name: str, limit: int, *, allow_empty: bool = False) -> str:
    value = params[name] if not allow_empty else params.get(name, "")
    if not isinstance(value, str) or (not value and not allow_empty) or len(value) > limit:
        raise ValueError(f"{name}: a string of 1 to {limit} characters")
    return value


assert set(CHANNEL_METHODS.values()) <= set(PERMISSIONS)
