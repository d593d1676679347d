"""Where the counting state lives (``--store``), and what a sidecar answers while it
cannot be reached (``--store-failure``).

``embedded`` (the default) keeps it in this process (journal + snapshots in
``--data-dir``); ``redis://[user:password@]HOST:PORT[/DB]`` and ``rediss://…``
(TLS) name one Redis server; ``redis+cluster://HOST:PORT[,HOST:PORT…]`` names
seed nodes of a Redis Cluster. A location prints without its password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

__all__ = ["EMBEDDED", "FAILURE_MODES", "StoreLocation", "parse_failure", "parse_store"]

Kind = Literal["embedded", "redis", "rediss", "redis+cluster"]
FAILURE_MODES = ("closed", "open")
_DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """A parsed ``--store`` value."""

    kind: Kind = "embedded"
    #: (host, port) of the server, or of each Cluster seed node.
    nodes: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def shared(self) -> bool:
        """The state lives in Redis, shared by every sidecar that names it."""
        return self.kind != "embedded"

    @property
    def tls(self) -> bool:
        return self.kind == "rediss"

    def __str__(self) -> str:
        if self.kind == "embedded":
            return "embedded"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        user = self.username + (":***" if self.password else "")
        auth = f"{user}@" if user else ""
        db = f"/{self.db}" if self.db else ""
        return f"{self.kind}://{auth}{hosts}{db}"


EMBEDDED = StoreLocation()


def _port(text: str, key: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{key}: port {text!r} of {where} is not 1..65535")
    return int(text)


def _node(text: str, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or (host.startswith("[") and not host.endswith("]")):
        host, port = text, str(_DEFAULT_PORT)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{key}: a node needs a host, got {text!r}")
    return host, _port(port, key, text)


def parse_store(value: str, key: str = "store") -> StoreLocation:
    """``embedded`` or a Redis URL (see the module docstring); ValueError naming
    ``key`` (without the password) when it is neither."""
    text = value.strip()
    if text.lower() == "embedded":
        return EMBEDDED
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "redis+cluster"):
        raise ValueError(
            f"{key}: expected embedded, redis://HOST:PORT[/DB], rediss://… or "
            f"redis+cluster://HOST:PORT[,HOST:PORT…], got scheme {scheme or text[:16]!r}"
        )
    auth, _, rest = rest.rpartition("@")
    hosts, _, db_text = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{key}: a store URL takes no query or fragment")
    user, _, password = auth.partition(":")
    user, password = unquote(user), unquote(password)
    if scheme == "redis+cluster":
        if db_text:
            raise ValueError(f"{key}: a Redis Cluster has no database number")
        nodes = tuple(_node(h, key) for h in hosts.split(",") if h)
        if not nodes:
            raise ValueError(f"{key}: redis+cluster:// needs at least one HOST:PORT")
        return StoreLocation("redis+cluster", nodes, 0, user, password)
    if not hosts:
        raise ValueError(f"{key}: {scheme}:// needs a host")
    if db_text and not db_text.isdigit():
        raise ValueError(f"{key}: database {db_text!r} is not a number")
    kind: Kind = "rediss" if scheme == "rediss" else "redis"
    return StoreLocation(kind, (_node(hosts, key),), int(db_text or 0), user, password)


def parse_failure(value: str, key: str = "store_failure") -> Literal["closed", "open"]:
    """``closed`` (answer RETRY_LATER while the store is gone) or ``open`` (admit, counted
    locally)."""
    text = value.strip().lower()
    if text == "closed":
        return "closed"
    if text == "open":
        return "open"
    raise ValueError(f"{key}: expected closed or open, got {value!r}")
