"""The adapter store: standard PEFT LoRA folders, content-addressed, with a name index.

One file because its writers (import, delete) take one lock and keep one rule,
that no name ever points at a missing object, which is only checkable with the
index, the objects and both writers in view.

Layout (``<state>/adapters/``, 0700)::

    index.json                  names → {sha256, parent, parent_sha256, meta, created_at}
    objects/<sha256>/           one standard PEFT adapter folder per content hash
        adapter_config.json
        adapter_model.safetensors
    .lock                       serialises writers (the CLI and the service may both write)

The address is the sha256 of ``adapter_model.safetensors`` alone, not of the
config, because PEFT writes its own version number into the config: the same
weights saved by two PEFT releases must have one address.
Names are dotted paths; a name's *stack* is its chain of parents
(``legal.patent.uspto`` → ``legal``, ``legal.patent``, ``legal.patent.uspto``),
and a level is only imported once its parent exists, so the chain is always
complete. PEFT refuses dots in adapter names (``nn.ModuleDict`` keys may not
contain ``.``), so loaded adapters never use these names as keys:
:func:`peft_key` maps a name to a safe key, and the engine uses slot keys.

This module imports no torch: ``personad adapter list/import/export`` stay
fast, and a persona may read the store. Safetensors files are checked by
parsing their header (8-byte little-endian length, JSON, offsets; see the
format at https://github.com/huggingface/safetensors#format) and hashing
them, which catches truncation and garbage before any loader sees the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import ErrorCode
from protocol.commands.inference import ADAPTER_NAME_PATTERN, MAX_STACK_DEPTH, AdapterInfo, StackEntry

from ..files import atomic_dir, atomic_write, file_lock
from ..state import ensure_private_dir
from .errors import AdapterCorrupt, AdapterNotFound, InferenceError, InvalidAdapterName, Unsupported

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "AdapterBusy",
    "AdapterHashMismatch",
    "AdapterRecord",
    "AdapterStore",
    "chain",
    "peft_key",
    "read_safetensors_header",
    "sha256_file",
    "validate_name",
]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_NAME = re.compile(ADAPTER_NAME_PATTERN)
_SHA = re.compile(r"^[0-9a-f]{64}$")
#: Bytes per element of the safetensors dtypes an adapter may use.
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
#: A safetensors header larger than this is not an adapter's (the format caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024
#: Config keys that change what an adapter computes; two configs that agree on
#: these describe the same function of the same weights.
_BEHAVIOUR_KEYS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "use_rslora",
    "use_dora",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
    "bias",
    "modules_to_save",
    "layers_to_transform",
)


class AdapterBusy(Unsupported):
    """Raised when an adapter cannot be deleted: ``reason`` is ``has_children`` or ``in_use``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AdapterHashMismatch(InferenceError):
    """Raised when a delete names a hash the name no longer points to (it was retrained since)."""

    code = ErrorCode.INVALID_PARAMS


def validate_name(name: str) -> str:
    """``name`` if it is a dotted adapter path, else InvalidAdapterName."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidAdapterName(
            f"invalid adapter name {name!r}: use dotted levels of lowercase letters, digits, "
            f"'_' and '-' (e.g. legal.patent.uspto), at most {MAX_STACK_DEPTH} levels"
        )
    return name


def chain(name: str) -> list[str]:
    """The stack of a name, root first: ``a.b.c`` → ``[a, a.b, a.b.c]``."""
    parts = validate_name(name).split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def parent_of(name: str) -> str | None:
    return name.rsplit(".", 1)[0] if "." in name else None


def peft_key(name: str) -> str:
    """A PEFT-safe adapter key for a dotted name (PEFT raises on ``.`` in adapter names).

    ``-`` becomes ``_h`` and ``.`` becomes ``__`` after escaping ``_`` as
    ``_u``, so the mapping is one-to-one and the key is a Python identifier.
    """
    validate_name(name)
    return "n_" + name.replace("_", "_u").replace("-", "_h").replace(".", "__")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, checked for consistency; AdapterCorrupt if not."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise AdapterCorrupt(
                    f"{path}: not a safetensors file (shorter than its 8-byte header length)"
                )
            (length,) = struct.unpack("<Q", raw)
            if length > min(_MAX_HEADER, size - 8):
                raise AdapterCorrupt(f"{path}: not a safetensors file (header length {length} is impossible)")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise AdapterCorrupt(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError):
        raise AdapterCorrupt(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdapterCorrupt(f"{path}: not a safetensors file (its header is not a table)")
    data_bytes = size - 8 - length
    end_max = 0
    tensors: dict[str, Any] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            width = _DTYPE_BYTES[dtype]
            ok = all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= begin <= end <= data_bytes
            ok = ok and end - begin == width * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            if isinstance(info, dict) and _past_end(info.get("data_offsets"), data_bytes):
                raise AdapterCorrupt(f"{path}: tensor {key!r} extends past the end of the file (truncated?)")
            raise AdapterCorrupt(f"{path}: tensor {key!r} has an invalid entry in the safetensors header")
        end_max = max(end_max, end)
        tensors[key] = {"dtype": dtype, "shape": list(shape)}
    if end_max != data_bytes:
        raise AdapterCorrupt(
            f"{path}: safetensors data is {data_bytes} bytes but its tensors cover {end_max} (truncated?)"
        )
    return tensors


def _past_end(offsets: Any, data_bytes: int) -> bool:
    return (
        isinstance(offsets, list)
        and len(offsets) == 2
        and isinstance(offsets[1], int)
        and offsets[1] > data_bytes
    )


@dataclass(frozen=True)
class AdapterRecord:
    """One named adapter: its index entry plus what its folder says about it."""

    name: str
    sha256: str
    parent: str | None
    parent_sha256: str | None
    path: Path
    bytes: int
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    created_at: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def entry(self) -> StackEntry:
        return StackEntry(name=self.name, sha256=self.sha256)

    def info(self) -> AdapterInfo:
        return AdapterInfo(
            name=self.name,
            sha256=self.sha256,
            parent=self.parent,
            bytes=self.bytes,
            rank=self.rank,
            alpha=self.alpha,
            target_modules=list(self.target_modules),
        )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise AdapterCorrupt(f"{folder}: no {CONFIG_FILE} (not a PEFT adapter folder)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterCorrupt(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterCorrupt(f"{path}: not a JSON object")
    return config


def check_lora_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate a PEFT LoRA folder; returns (config, tensor table). Raises AdapterCorrupt/Unsupported."""
    if not folder.is_dir():
        raise AdapterNotFound(f"{folder}: no such adapter folder")
    config = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        hint = (
            " (adapter_model.bin is not accepted: re-save it with safetensors)"
            if (folder / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterCorrupt(f"{folder}: no {WEIGHTS_FILE}{hint}")
    if config.get("peft_type") != "LORA":
        raise Unsupported(
            f"{folder}: peft_type is {config.get('peft_type')!r}; only LORA adapters are stored"
        )
    # A stack is a *sum* of deltas (merged, cat and batched modes all rely on
    # it); DoRA and modules_to_save are not additive, so they cannot stack.
    if config.get("use_dora"):
        raise Unsupported(f"{folder}: DoRA adapters cannot be stacked (their deltas do not add up)")
    if config.get("modules_to_save"):
        raise Unsupported(f"{folder}: adapters with modules_to_save cannot be stacked")
    if config.get("target_parameters"):
        raise Unsupported(f"{folder}: adapters targeting parameters (target_parameters) are not supported")
    tensors = read_safetensors_header(weights)
    if not tensors:
        raise AdapterCorrupt(f"{weights}: holds no tensors")
    for key, info in tensors.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise Unsupported(f"{weights}: tensor {key!r} is not a LoRA A/B matrix (embeddings, biases …)")
        if len(info["shape"]) != 2:
            raise Unsupported(f"{weights}: tensor {key!r} is not a matrix (only Linear layers are supported)")
    return config, tensors


def _targets(config: dict[str, Any], tensors: dict[str, Any]) -> tuple[str, ...]:
    # The leaf module names actually present, which is what matters whatever
    # form (list, regex string) target_modules was given in.
    names = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in tensors}
    return tuple(sorted(names))


class AdapterStore:
    """A content-addressed store of LoRA adapters with a dotted-name index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    @classmethod
    def for_state(cls, state_root: Path, *, create: bool = True) -> AdapterStore:
        """The shared store of a state directory: ``<state>/adapters``."""
        store = cls(state_root / "adapters")
        if create:
            ensure_private_dir(state_root)
            store.ensure()
        return store

    def ensure(self) -> AdapterStore:
        ensure_private_dir(self.root)
        ensure_private_dir(self.objects)
        return self

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def object_path(self, sha256: str) -> Path:
        if not _SHA.fullmatch(sha256):
            raise AdapterNotFound(f"{sha256!r} is not a sha256 hex digest")
        return self.objects / sha256

    # -- reading -------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        """The name index, re-read only when the file changed (the CLI may write it)."""
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        try:
            doc = json.loads(self.index_path.read_text("utf-8"))
            names = doc["adapters"]
            if not isinstance(names, dict):
                raise TypeError("adapters is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterCorrupt(f"{self.index_path}: not a valid adapter index ({exc})") from None
        self._cache = (stamp, names)
        return names

    def names(self) -> list[str]:
        return sorted(self._index())

    def get(self, name: str) -> AdapterRecord:
        """The record for a name; AdapterNotFound names the closest existing ones."""
        validate_name(name)
        entry = self._index().get(name)
        if entry is None:
            known = self.names()
            near = [n for n in known if n.split(".")[0] == name.split(".")[0]][:5]
            hint = f"; known under {name.split('.')[0]!r}: {', '.join(near)}" if near else ""
            if not known:
                hint = "; the store is empty (personad adapter import/train)"
            raise AdapterNotFound(f"no adapter named {name!r} in {self.root}{hint}")
        return self._record(name, entry)

    def _record(self, name: str, entry: dict[str, Any]) -> AdapterRecord:
        sha = entry["sha256"]
        path = self.object_path(sha)
        try:
            config = _read_config(path)
            size = (path / WEIGHTS_FILE).stat().st_size
        except FileNotFoundError:
            raise AdapterCorrupt(
                f"adapter {name!r}: its object {sha[:12]}… is missing from {self.objects}"
            ) from None
        except AdapterCorrupt as exc:
            raise AdapterCorrupt(f"adapter {name!r}: {exc}") from None
        return AdapterRecord(
            name=name,
            sha256=sha,
            parent=parent_of(name),
            parent_sha256=entry.get("parent_sha256"),
            path=path,
            bytes=size,
            rank=int(config.get("r", 0)),
            alpha=float(config.get("lora_alpha", 0)),
            target_modules=tuple(entry.get("targets") or ()),
            created_at=float(entry.get("created_at", 0.0)),
            meta=dict(entry.get("meta") or {}),
        )

    def records(self) -> list[AdapterRecord]:
        return [self.get(name) for name in self.names()]

    def resolve(self, name: str) -> list[AdapterRecord]:
        """A name's stack, root first."""
        return [self.get(level) for level in chain(name)]

    def by_hash(self, entry: StackEntry) -> AdapterRecord:
        """The adapter a pinned stack entry names, even if the name was retrained since.

        The object is what counts (content addressing); the name is kept for
        display. A hash no longer in the store is AdapterNotFound.
        """
        path = self.object_path(entry.sha256)
        current = self._index().get(entry.name)
        if current is not None and current["sha256"] == entry.sha256:
            return self._record(entry.name, current)
        if not (path / WEIGHTS_FILE).exists():
            raise AdapterNotFound(
                f"adapter {entry.name!r} at {entry.sha256[:12]}… is no longer in the store "
                "(re-run lora.load_stack to pick up its current version)"
            )
        config = _read_config(path)
        tensors = read_safetensors_header(path / WEIGHTS_FILE)
        return AdapterRecord(
            name=entry.name,
            sha256=entry.sha256,
            parent=parent_of(entry.name),
            parent_sha256=None,
            path=path,
            bytes=(path / WEIGHTS_FILE).stat().st_size,
            rank=int(config.get("r", 0)),
            alpha=float(config.get("lora_alpha", 0)),
            target_modules=_targets(config, tensors),
            created_at=0.0,
        )

    def verify(self, record: AdapterRecord) -> None:
        """Check an object against its address: AdapterCorrupt if it was altered on disk."""
        weights = record.path / WEIGHTS_FILE
        check_lora_folder(record.path)
        actual = sha256_file(weights)
        if actual != record.sha256:
            raise AdapterCorrupt(
                f"adapter {record.name!r}: {weights} hashes to {actual[:12]}…, not {record.sha256[:12]}… "
                "(the file was altered or damaged; re-import or retrain it)"
            )

    def is_stale(self, record: AdapterRecord) -> bool:
        """True when the parent was replaced after this level was stored (trained on another parent)."""
        if record.parent is None:
            return False
        entry = self._index().get(record.parent)
        return entry is None or entry["sha256"] != record.parent_sha256

    # -- writing -------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.ensure()
        with file_lock(self.root / ".lock"):
            yield

    def import_folder(self, source: Path, name: str, *, meta: dict[str, Any] | None = None) -> AdapterRecord:
        """Store a standard PEFT LoRA folder under ``name``; returns its record.

        Idempotent: the same content under the same name changes nothing but
        ``meta``. The parent level must already be stored.
        """
        validate_name(name)
        source = Path(source)
        config, tensors = check_lora_folder(source)
        sha = sha256_file(source / WEIGHTS_FILE)
        with self._locked():
            index = dict(self._index())
            parent = parent_of(name)
            parent_sha = None
            if parent is not None:
                if parent not in index:
                    raise AdapterNotFound(
                        f"cannot store {name!r}: its parent {parent!r} is not in the store (import it first)"
                    )
                parent_sha = index[parent]["sha256"]
            target = self.object_path(sha)
            if target.exists():
                stored = _read_config(target)
                diff = [k for k in _BEHAVIOUR_KEYS if _norm(stored.get(k)) != _norm(config.get(k))]
                if diff:
                    raise AdapterCorrupt(
                        f"{source}: the store already holds these weights ({sha[:12]}…) with a different "
                        f"config ({', '.join(diff)}); refusing to guess which is right"
                    )
            else:
                # Readers (the engine, another CLI) find a whole object or none.
                with atomic_dir(target, mode=0o700) as tmp:
                    shutil.copyfile(source / CONFIG_FILE, tmp / CONFIG_FILE)
                    shutil.copyfile(source / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
                    if sha256_file(tmp / WEIGHTS_FILE) != sha:
                        raise AdapterCorrupt(f"{source}: changed while it was being imported")
                    for f in tmp.iterdir():
                        os.chmod(f, 0o600)
            index[name] = {
                "sha256": sha,
                "parent_sha256": parent_sha,
                "targets": list(_targets(config, tensors)),
                "created_at": time.time(),
                "meta": dict(meta or {}),
            }
            self._write_index(index)
        return self.get(name)

    def _write_index(self, names: dict[str, Any]) -> None:
        doc = {"version": 1, "adapters": dict(sorted(names.items()))}
        atomic_write(self.index_path, json.dumps(doc, indent=2).encode("utf-8"), mode=0o600)
        self._cache = None

    def delete(self, name: str, *, sha256: str | None = None) -> tuple[str, bool]:
        """Remove ``name`` from the index, and its object when no other name points to it.

        Returns (the sha256 it pointed to, whether the object was removed).
        Refuses (:class:`AdapterBusy`, ``has_children``) a level other names
        stack on: removing it would break their chains. With ``sha256``, a
        name that now points elsewhere is :class:`AdapterHashMismatch` and
        nothing changes. Whether a loaded model uses it is the engine's
        question (adapter_admin.py), asked before this.
        """
        validate_name(name)
        with self._locked():
            index = dict(self._index())
            if name not in index:
                self.get(name)  # AdapterNotFound, naming what the store holds
            sha = str(index[name]["sha256"])
            if sha256 is not None and sha256 != sha:
                raise AdapterHashMismatch(
                    f"invalid params: sha256: {name!r} points to {sha[:12]}…, not {sha256[:12]}… "
                    "(retrained since?); nothing deleted"
                )
            children = sorted(n for n in index if parent_of(n) == name)
            if children:
                raise AdapterBusy(
                    f"adapter {name!r} is the parent of {', '.join(children)}: delete those first",
                    reason="has_children",
                )
            del index[name]
            blob_removed = not any(entry["sha256"] == sha for entry in index.values())
            # The name goes first: a reader then never finds a name whose object is missing.
            self._write_index(index)
            if blob_removed:
                self._remove_object(sha)
        return sha, blob_removed

    def _remove_object(self, sha: str) -> None:
        """Take ``objects/<sha>/`` out in one rename, then delete its files (a reader sees all or none)."""
        folder = self.object_path(sha)
        if not folder.exists():
            return
        trash = self.root / f".deleted-{sha}-{os.getpid()}"
        os.rename(folder, trash)
        shutil.rmtree(trash)

    def export(self, name: str, dest: Path) -> AdapterRecord:
        """Write ``name`` as a standard PEFT folder at ``dest`` (new or empty)."""
        record = self.get(name)
        self.verify(record)
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise InvalidAdapterName(f"{dest} exists and is not an empty folder; choose a new path")
        dest.mkdir(parents=True, exist_ok=True)
        for file in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(record.path / file, dest / file)
        return record


def _norm(value: Any) -> Any:
    # target_modules may be saved as a list in any order (PEFT keeps a set).
    if isinstance(value, list):
        return sorted(map(str, value))
    return value
