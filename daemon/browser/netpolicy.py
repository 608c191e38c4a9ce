"""Which addresses Chromium may connect to: the worker's network policy.

``browser_js`` is code execution in a browser, so whatever the worker's host
can reach, a requester can reach: the bus's own ``/metrics``, a database on
loopback, the cloud's metadata service at 169.254.169.254, the LAN. The
policy denies every address that is not on the public internet unless the
operator allows it:

* loopback 127/8 and ::1, unspecified 0/8 and ::, link-local 169.254/16 and
  fe80::/10, private 10/8, 172.16/12, 192.168/16, CGNAT 100.64/10, ULA
  fc00::/7, site-local fec0::/10, multicast 224/4 and ff00::/8, reserved
  240/4 (broadcast included), and the IETF's special blocks below;
* IPv6 addresses that carry an IPv4 one (mapped ``::ffff:a.b.c.d``,
  compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) are
  judged by that IPv4 address, so ``[::ffff:127.0.0.1]`` is loopback.

The decision is made on an *address* — what the connection will really go to
— never on the URL's text: ``127.1``, ``0x7f000001`` and ``2130706433`` are
all 127.0.0.1 once parsed, and a name can resolve to anything (proxy.py
resolves it and connects to exactly the address it checked).

The allow-list (``personad browser --allow``, ``$PERSONAD_BROWSER_ALLOW``)
takes, each entry:

* a network or an address, ``10.1.0.0/16``, ``192.168.1.20``, ``fd00::/8``:
  every port of it;
* ``address:port`` or ``[v6]:port``, ``127.0.0.1:8000``: that port only;
* ``name:port``, ``intranet.example:443``: requests naming that host and
  port, whatever it resolves to (the operator trusts that name).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Environment variable with allow-list entries (separated by commas or spaces).
ALLOW_ENV = "PERSONAD_BROWSER_ALLOW"

#: (rule name, network), checked in order; the first match names the rule.
DENIED: tuple[tuple[str, IPNetwork], ...] = tuple(
    (name, ipaddress.ip_network(net))
    for name, net in (
        ("unspecified", "0.0.0.0/8"),
        ("loopback", "127.0.0.0/8"),
        ("private", "10.0.0.0/8"),
        ("cgnat", "100.64.0.0/10"),
        ("link-local", "169.254.0.0/16"),
        ("private", "172.16.0.0/12"),
        ("ietf-special", "192.0.0.0/24"),
        ("documentation", "192.0.2.0/24"),
        ("private", "192.168.0.0/16"),
        ("benchmarking", "198.18.0.0/15"),
        ("documentation", "198.51.100.0/24"),
        ("documentation", "203.0.113.0/24"),
        ("multicast", "224.0.0.0/4"),
        ("reserved", "240.0.0.0/4"),
        ("unspecified", "::/128"),
        ("loopback", "::1/128"),
        ("discard", "100::/64"),
        ("documentation", "2001:db8::/32"),
        ("ula", "fc00::/7"),
        ("link-local", "fe80::/10"),
        ("site-local", "fec0::/10"),
        ("multicast", "ff00::/8"),
    )
)

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]]+)):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Decision:
    """Whether a connection may be made, and the rule that said so (for logs and errors)."""

    allowed: bool
    rule: str


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, 6to4, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # ::a.b.c.d (deprecated "IPv4-compatible"); :: and ::1 are themselves.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def denied_rule(address: IPAddress) -> str | None:
    """The deny rule ``address`` falls under (``"loopback 127.0.0.0/8"``), or None if public."""
    for candidate in (address, embedded_ipv4(address)):
        if candidate is None:
            continue
        for name, net in DENIED:
            if candidate.version == net.version and candidate in net:
                via = f" (as {address})" if candidate is not address else ""
                return f"{name} {net}{via}"
    return None


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: a network (any port), an address and port, or a name and port."""

    text: str
    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def matches(self, host: str, port: int, address: IPAddress) -> bool:
        if self.network is not None:
            candidates = [address, embedded_ipv4(address)]
            in_net = any(
                c is not None and c.version == self.network.version and c in self.network for c in candidates
            )
            return in_net and (self.port is None or self.port == port)
        return self.host == host.lower().rstrip(".") and self.port == port


def parse_allow_entry(text: str) -> AllowEntry:
    """``10.0.0.0/8``, ``192.168.1.5``, ``127.0.0.1:8000``, ``[::1]:8000`` or ``name:port``.

    Raises ConfigError with what is accepted.
    """
    entry = text.strip()
    try:
        return AllowEntry(entry, network=ipaddress.ip_network(entry, strict=False))
    except ValueError:
        pass
    match = _HOST_PORT.match(entry)
    if match is not None and 0 < int(match["port"]) < 65536:
        port = int(match["port"])
        literal = match["v6"] or match["host"]
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            if match["v6"] is None and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?", literal):
                return AllowEntry(entry, host=literal.lower().rstrip("."), port=port)
        else:
            return AllowEntry(entry, network=ipaddress.ip_network(address), port=port)
    raise ConfigError(
        f"invalid browser allow-list entry {text!r}: give a network (10.0.0.0/8), an address "
        "(192.168.1.5), an address and port (127.0.0.1:8000, [::1]:8000) or a host name and "
        "port (intranet.example:443)"
    )


def split_allow_list(text: str) -> list[str]:
    """Entries of ``$PERSONAD_BROWSER_ALLOW``: separated by commas and/or whitespace."""
    return [part for part in re.split(r"[\s,]+", text) if part]


class NetworkPolicy:
    """Deny non-public addresses unless an allow-list entry matches."""

    def __init__(self, allow: tuple[str, ...] | list[str] = ()) -> None:
        self.allow = tuple(parse_allow_entry(text) for text in allow)

    def check(self, host: str, port: int, address: IPAddress) -> Decision:
        """May a connection for ``host:port`` go to ``address``?"""
        for entry in self.allow:
            if entry.matches(host, port, address):
                return Decision(True, f"allowed by {entry.text}")
        rule = denied_rule(address)
        if rule is not None:
            return Decision(False, rule)
        return Decision(True, "public")
