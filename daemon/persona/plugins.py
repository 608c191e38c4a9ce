"""persona.plugin.add / remove / run and persona.plugins: signed plugins in a sandbox.

Thin translation between the protocol (protocol/commands/plugins.py) and
:class:`daemon.plugins.host.PluginHost`. A plugin's ``chat`` requests go to
this persona's own ``chat`` handler in-process (its voice, its LoRA stack,
its memories), as ``plugin:<id>``, so the exchange is logged like any other.
The trust store is the installation's: ``<state>/plugins/trusted.json``,
the state root being two levels above the persona's folder.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from protocol import ErrorCode, Request, RpcError
from protocol.commands import plugins as m

from ..brain import Brain
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..plugins.errors import PluginError
from ..plugins.host import InstalledPlugin, PluginHost
from .session_dir import SessionDir

#: Refusals of what the folder *is* (signature, trust): the caller may not install it.
_FORBIDDEN = frozenset({"unsigned", "bad_signature", "untrusted", "modified"})


def _translate(exc: PluginError, field: str) -> RpcError:
    data = {"reason": exc.reason, "field": field}
    if exc.reason in _FORBIDDEN:
        return RpcError(ErrorCode.FORBIDDEN, f"plugin refused: {exc}", data)
    if exc.reason == "sandbox_unavailable":
        return RpcError(ErrorCode.INTERNAL_ERROR, str(exc), data)
    return RpcError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {exc}", data)


def _info(plugin: InstalledPlugin) -> m.PluginInfo:
    manifest, stats = plugin.manifest, plugin.stats
    return m.PluginInfo(
        id=manifest.id,
        name=manifest.name,
        version=manifest.version,
        description=manifest.description,
        permissions=list(manifest.permissions),
        risk=manifest.risk,
        signer=plugin.signer,
        limits=manifest.limits.model_dump(),
        stats=m.PluginStatsModel(
            runs=stats.runs,
            failures=stats.failures,
            mean_duration_s=stats.mean_duration_s,
            last_run_at=stats.last_run_at,
            stopped_by=stats.stopped_by,
        ),
    )


def register_plugins_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""
    persona_id = session_dir.root.name
    request_ids = itertools.count(1)

    async def chat(plugin_id: str, message: str, max_tokens: int) -> str:
        request = Request.model_validate(
            {
                "id": f"plugin-chat-{next(request_ids)}",
                "method": "chat",
                "params": {"message": message, "max_tokens": max_tokens, "stream": False},
                "to": f"persona:{persona_id}",
                "from": f"plugin:{plugin_id}",
            }
        )
        result = await dispatcher(request, CallContext(client=client, request=request, generation=0))
        return str(result["reply"])

    host = PluginHost(session_dir.plugins, session_dir.artifacts, session_dir.root.parent.parent, brain, chat)

    async def add(p: m.PluginAddParams, ctx: CallContext) -> m.PluginAddResult:
        path = Path(p.path)
        if not path.is_absolute():
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                "invalid params: path: an absolute path (the persona's working directory is not yours)",
                {"field": "path", "reason": "bad_folder"},
            )
        try:
            return m.PluginAddResult(plugin=_info(await host.add(path, replace=p.replace)))
        except PluginError as exc:
            raise _translate(exc, "path") from None

    async def listing(p: Any, ctx: CallContext) -> m.PluginsResult:
        return m.PluginsResult(plugins=[_info(plugin) for plugin in await host.installed()])

    async def remove(p: m.PluginRemoveParams, ctx: CallContext) -> m.PluginRemoveResult:
        return m.PluginRemoveResult(removed=await host.remove(p.plugin_id))

    async def run(p: m.PluginRunParams, ctx: CallContext) -> m.PluginRunResult:
        try:
            _, outcome = await host.run(p.plugin_id, p.input)
        except PluginError as exc:
            raise _translate(exc, "plugin_id") from None
        return m.PluginRunResult(plugin_id=p.plugin_id, **outcome.__dict__)

    dispatcher.register("persona.plugin.add", add)
    dispatcher.register("persona.plugins", listing)
    dispatcher.register("persona.plugin.remove", remove)
    dispatcher.register("persona.plugin.run", run)
