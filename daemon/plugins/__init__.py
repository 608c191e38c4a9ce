"""Signed plugins run in a bubblewrap sandbox (docs/plugins.md).

manifest: the manifest and permission vocabulary; signing: Ed25519 over the
folder; trust: the operator's trusted keys; sandbox: bwrap, rlimits and the
channel; host: a persona's installed plugins; api: the plugin-side helper;
cli: the ``personad plugin`` verbs.
"""

from .errors import PluginError

__all__ = ["PluginError"]
