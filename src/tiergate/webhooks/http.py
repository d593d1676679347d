"""An optional HTTP receiver for Meta webhooks (``tiergate serve --webhook-listen``).

Why the standard library (``asyncio.start_server``) and not aiohttp: the
receiver serves exactly two requests on one path — Meta's GET verification
handshake and its signed POSTs — so a small, strict HTTP/1.1 reader is less
code to trust than a framework, adds no dependency to a sidecar that already
ships gRPC, and runs on the same event loop as the gRPC server (so applying a
webhook never races an Admit). It also closes slow request heads and answers
oversized bodies before reading them, which aiohttp's server leaves to a proxy:
tests/webhooks/test_webhook_http_side_by_side.py sends both the same hostile
clients (docs/architecture.md has the table). What it accepts:

- a request line ``METHOD SP /path[?query] SP HTTP/1.1`` (or HTTP/1.0) and
  header lines ``name: value``; the whole head at most 16 KiB and 100
  headers; no obsolete line folding;
- a body only by ``Content-Length`` (no chunked transfer coding → 501), at
  most ``max_body_bytes`` (default 1 MiB → 413 before reading it);
  ``Expect: 100-continue`` is honoured;
- persistent connections (HTTP/1.1 keep-alive), with timeouts for an idle
  connection, a slow head and a slow body;
- at most ``max_connections`` open connections: a new one beyond it closes
  the connection that has waited longest for its next request (an idle
  keep-alive or one still sending its head), so idle connections cannot keep
  a signed POST out; when every connection is busy, the new one is answered
  503 and closed;
- TLS (and client certificates) with an ``ssl.SSLContext`` given to ``start``.

A POST's events are applied in slices (``slice_events``) between which the
event loop serves other calls, with the result of applying them at once. A
store that cannot take them now (the shared store's Redis gone) answers 503,
so Meta delivers the webhook again later. At
``stop`` a body being applied is applied to its end and answered.

Routes (``path`` defaults to ``/webhook``):

- ``GET path?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`` → 200
  with ``C`` when ``T`` equals the configured verify token, else 403;
- ``POST path`` → the body is verified with ``X-Hub-Signature-256`` (when an
  app secret is set), parsed and applied, then answered: 200 with the counts
  as JSON, 403 for a bad signature, 400 for a malformed body (Meta retries
  anything but 200, so a body tiergate will never accept is not retried into
  a loop of 5xx);
- another method on the path → 405; any other path → 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from tiergate.store.base import StoreUnavailableError

from .ingest import DEFAULT_SLICE_EVENTS, Applier, IngestResult, WebhookIngestor, ingestor_for
from .parse import DEFAULT_MAX_BYTES, WebhookError
from .signature import SignatureError

__all__ = ["WebhookReceiver"]

log = logging.getLogger("tiergate.webhooks")

MAX_HEAD_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 100
MAX_CHALLENGE_CHARS: Final = 256
DEFAULT_MAX_CONNECTIONS: Final = 256
_TOKEN_CHARS: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_TEXT: Final = "text/plain; charset=utf-8"


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class WebhookReceiver:
    """Receives Meta's webhook HTTP requests and applies them to ``service``.

    ``secret`` is the Meta app secret (empty: signatures are not checked —
    only sensible behind a proxy that checks them); ``verify_token`` is the
    token configured for Meta's subscription handshake (empty: every
    handshake is refused); ``now_fn`` returns the current time in Unix ms.
    ``after_ingest`` (optional) runs after a body was applied and before the
    200 is sent — the server uses it to make the state changes durable.
    """

    def __init__(
        self,
        service: Applier,
        secret: str,
        verify_token: str,
        now_fn: Callable[[], int],
        *,
        path: str = "/webhook",
        max_body_bytes: int = DEFAULT_MAX_BYTES,
        ingestor: WebhookIngestor | None = None,
        after_ingest: Callable[[IngestResult], Awaitable[None]] | None = None,
        idle_timeout_s: float = 75.0,
        read_timeout_s: float = 15.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        slice_events: int = DEFAULT_SLICE_EVENTS,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"webhook path must start with '/', got {path!r}")
        if max_connections < 1 or slice_events < 1:
            raise ValueError("max_connections and slice_events must be positive")
        self.service = service
        self.secret = secret
        self.verify_token = verify_token
        self.now_fn = now_fn
        self.path = path
        self.max_body_bytes = max_body_bytes
        self.ingestor = ingestor if ingestor is not None else ingestor_for(service)
        self.after_ingest = after_ingest
        self.idle_timeout_s = idle_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.slice_events = slice_events
        self._server: asyncio.Server | None = None
        # Open connections (task → writer), and those waiting for a request head,
        # longest waiting first.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._idle: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._applying: set[asyncio.Task[None]] = set()
        self._closing = False
        self.evicted = 0  # idle connections closed to make room
        self.refused = 0  # connections refused with 503: every one busy

    @property
    def port(self) -> int:
        """The bound TCP port (useful after ``start(host, 0)``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the webhook receiver is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str, port: int, *, ssl: ssl.SSLContext | None = None) -> None:
        if self._server is not None:
            raise RuntimeError("the webhook receiver is already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_HEAD_BYTES, reuse_address=True, ssl=ssl
        )
        if not self.secret:
            log.warning("webhook receiver checks no signatures: no app secret configured")
        log.info("webhook receiver listening on %s:%d%s", host, self.port, self.path)

    async def stop(self) -> None:
        """Stop accepting connections, then close the open ones (a body being
        applied is applied to its end and answered first)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        tasks = list(self._connections)
        for task, writer in list(self._connections.items()):
            if task not in self._applying:
                # Its reads end (and its task with them); no task is cancelled.
                writer.transport.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # --- connection loop ---------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if task is None or not self._make_room():
                self.refused += 1
                await self._send(
                    writer, HTTPStatus.SERVICE_UNAVAILABLE, "too many connections", close=True
                )
                return
            self._connections[task] = writer
            await self._connection(reader, writer, task)
        except ConnectionError:
            pass
        finally:
            if task is not None:
                self._connections.pop(task, None)
                self._idle.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _make_room(self) -> bool:
        """Whether a new connection may be served: below the cap, or after closing
        the connection that has waited longest for a request head."""
        if len(self._connections) < self.max_connections:
            return True
        if not self._idle:
            return False
        task, writer = next(iter(self._idle.items()))
        del self._idle[task]
        del self._connections[task]
        self.evicted += 1
        # Its reader sees the end of the stream, and its task ends.
        writer.transport.abort()
        return True

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        first = True
        while not self._closing:
            timeout = self.read_timeout_s if first else self.idle_timeout_s
            first = False
            self._idle[task] = writer
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            except (asyncio.IncompleteReadError, TimeoutError):
                return  # closed or idle: nothing to answer
            except asyncio.LimitOverrunError:
                await self._send(
                    writer,
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head is larger than 16 KiB",
                    close=True,
                )
                return
            finally:
                self._idle.pop(task, None)
            try:
                request = _parse_head(head)
                status, ctype, payload = await self._dispatch(request, reader, writer)
            except _HttpError as exc:
                await self._send(writer, exc.status, exc.message, close=True)
                return
            keep = request.keep_alive() and not self._closing
            await self._send(writer, status, payload, content_type=ctype, close=not keep)
            if not keep:
                return

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: HTTPStatus,
        payload: str,
        *,
        content_type: str = "text/plain; charset=utf-8",
        close: bool,
    ) -> None:
        data = payload.encode()
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        )
        writer.write(head.encode("latin-1") + data)
        await writer.drain()

    # --- routes ------------------------------------------------------------

    async def _dispatch(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[HTTPStatus, str, str]:
        url = urlsplit(request.target)
        if url.path != self.path or not request.target.startswith("/"):
            # A body we will not read would desynchronise the connection.
            if _content_length(request, self.max_body_bytes) or "transfer-encoding" in (
                request.headers
            ):
                raise _HttpError(HTTPStatus.NOT_FOUND, "not found")
            return HTTPStatus.NOT_FOUND, _TEXT, "not found"
        if request.method == "GET":
            return self._handshake(url.query)
        if request.method == "POST":
            body = await self._read_body(request, reader, writer)
            task = asyncio.current_task()
            assert task is not None
            self._applying.add(task)
            try:
                return await self._post(body, request.headers.get("x-hub-signature-256"))
            finally:
                self._applying.discard(task)
        raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and POST are served here")

    def _handshake(self, query: str) -> tuple[HTTPStatus, str, str]:
        try:
            params = dict(parse_qsl(query, keep_blank_values=True, max_num_fields=16))
        except ValueError:
            return HTTPStatus.BAD_REQUEST, _TEXT, "malformed query string"
        mode = params.get("hub.mode", "")
        token = params.get("hub.verify_token", "")
        challenge = params.get("hub.challenge", "")
        if (
            mode == "subscribe"
            and self.verify_token
            and hmac.compare_digest(token.encode(), self.verify_token.encode())
        ):
            if len(challenge) > MAX_CHALLENGE_CHARS or not challenge.isprintable():
                return HTTPStatus.BAD_REQUEST, _TEXT, "hub.challenge is not a short printable value"
            return HTTPStatus.OK, _TEXT, challenge
        return HTTPStatus.FORBIDDEN, _TEXT, "verification failed"

    async def _read_body(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        if "transfer-encoding" in request.headers:
            raise _HttpError(HTTPStatus.NOT_IMPLEMENTED, "only Content-Length bodies are accepted")
        if "content-length" not in request.headers:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        length = _content_length(request, self.max_body_bytes)
        if request.headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        try:
            return await asyncio.wait_for(reader.readexactly(length), self.read_timeout_s)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("client closed before sending the whole body") from None
        except TimeoutError:
            raise _HttpError(HTTPStatus.REQUEST_TIMEOUT, "body not received in time") from None

    async def _post(self, body: bytes, signature: str | None) -> tuple[HTTPStatus, str, str]:
        try:
            result = await self.ingestor.ingest_sliced(
                body, signature, self.secret, self.now_fn(), slice_events=self.slice_events
            )
        except SignatureError as exc:
            return HTTPStatus.FORBIDDEN, _TEXT, f"signature rejected: {exc}"
        except WebhookError as exc:
            return HTTPStatus.BAD_REQUEST, _TEXT, f"malformed webhook: {exc}"
        except StoreUnavailableError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, str(exc)
        except Exception:
            log.exception("webhook ingestion failed")
            return HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, "internal error"
        if self.after_ingest is not None:
            try:
                await self.after_ingest(result)
            except StoreUnavailableError as exc:
                return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, str(exc)
            except Exception:
                log.exception("webhook state could not be made durable")
                return HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, "internal error"
        answer = {
            "applied": result.applied,
            "ignored": result.ignored,
            "ignored_events": [{"field": f, "reason": r} for f, r in result.ignored_events],
        }
        return HTTPStatus.OK, "application/json", json.dumps(answer)


def _parse_head(head: bytes) -> _Request:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN_CHARS or not parts[1]:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.1 and 1.0")
    if any(c <= " " or c == "\x7f" for c in target):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise _HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if any(c < " " and c != "\t" for c in text):
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"control character in header {key}")
        if key in headers:
            if key in ("content-length", "host", "x-hub-signature-256", "transfer-encoding"):
                raise _HttpError(HTTPStatus.BAD_REQUEST, f"header {key} given twice")
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
    if version == "HTTP/1.1" and "host" not in headers:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "Host header is required")
    return _Request(method, target, version, headers)


def _content_length(request: _Request, limit: int) -> int:
    raw = request.headers.get("content-length")
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    length = int(raw)
    if length > limit:
        raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body is larger than {limit} bytes")
    return length
