"""A seccomp filter that takes the network from a sandbox without the ``network`` permission.

The network namespace already leaves such a plugin nothing to reach; this
filter makes the attempt fail at once and unmistakably: ``socket()`` for
any family but AF_UNIX fails with EAFNOSUPPORT, ``io_uring_setup`` (which can
open sockets on its own) with ENOSYS, and so does every syscall of another
ABI (i386 ``int 0x80``, x32) through which the checks could be sidestepped.
Everything else is allowed: the rest of the confinement is bwrap's.

The program is classic BPF, built here (no libseccomp), and handed to
``bwrap --seccomp FD``. Supported: x86_64 and aarch64; elsewhere
:func:`network_filter` returns None and the namespace alone applies.
"""

from __future__ import annotations

import errno
import platform
import struct
from typing import Final

__all__ = ["network_filter"]

_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_RET_K: Final = 0x06
_RET_ALLOW: Final = 0x7FFF0000
_RET_ERRNO: Final = 0x00050000
_X32_BIT: Final = 0x40000000
AF_UNIX: Final = 1
IO_URING_SETUP: Final = 425

#: machine -> (AUDIT_ARCH_*, __NR_socket)
_ARCHES: Final = {
    "x86_64": (0xC000003E, 41),
    "aarch64": (0xC00000B7, 198),
}


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def network_filter(machine: str | None = None) -> bytes | None:
    """The compiled filter for this machine (or ``machine``), or None where unsupported."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr_socket = arch
    deny_family = _RET_ERRNO | errno.EAFNOSUPPORT
    no_such_call = _RET_ERRNO | errno.ENOSYS
    program = [
        _op(_LD_W_ABS, 4),  # seccomp_data.arch
        _op(_JEQ_K, audit_arch, 1, 0),
        _op(_RET_K, no_such_call),  # another ABI
        _op(_LD_W_ABS, 0),  # seccomp_data.nr
        _op(_JGE_K, _X32_BIT, 0, 1),
        _op(_RET_K, no_such_call),  # x32 numbers on x86_64
        _op(_JEQ_K, IO_URING_SETUP, 0, 1),
        _op(_RET_K, no_such_call),
        _op(_JEQ_K, nr_socket, 0, 3),
        _op(_LD_W_ABS, 16),  # seccomp_data.args[0], low half: the family
        _op(_JEQ_K, AF_UNIX, 1, 0),
        _op(_RET_K, deny_family),
        _op(_RET_K, _RET_ALLOW),
    ]
    return b"".join(program)
