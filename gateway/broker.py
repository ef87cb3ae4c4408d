"""The embedded MQTT broker behind ``icvgw demo``: amqtt on its own event loop and thread.

The demo is zero setup, so unless ``--broker`` names a real broker it starts this one
in-process. amqtt is a pure-Python asyncio broker with these limits (amqtt 0.12), which the
demo configures for explicitly:

* **MQTT 3.1.1 only.** Every client of this broker must connect with protocol ``"3.1.1"``.
  An MQTT 5 CONNECT is answered with a 3.1.1 CONNACK carrying return code 1 ("unacceptable
  protocol version") and the connection is closed; paho reports that as a failed connect,
  never as a session. ``$share/...`` subscriptions deliver nothing.
* **Anonymous sessions keep no queue.** amqtt queues QoS 1/2 messages for a disconnected
  ``clean_session=False`` session only if that session authenticated with a username. The
  broker therefore admits exactly one user whose name and password are generated for the
  run (:attr:`EmbeddedBroker.username`, :attr:`EmbeddedBroker.password`,
  :attr:`EmbeddedBroker.client_url`); clients without them are refused (CONNACK 5), so no
  demo client can end up in a session that silently drops what it missed.
* **Queued messages arrive with the RETAIN flag set** when a persistent session reconnects;
  consumers of this broker must not treat RETAIN as "stale snapshot".
* **A QoS 1 message already sent to a subscriber is not re-sent.** amqtt stops tracking it
  when the subscriber disconnects before its PUBACK, or after 5 s without one (then it logs
  "Received PUBACK for unknown pending message" when the PUBACK comes). Only messages
  published while the subscriber was away are queued for its reconnect.
* **State lives in memory.** Sessions, subscriptions and queues end with :meth:`stop`.

The listening socket is ours (amqtt's "external" listener type, fed by :class:`_Acceptor`),
so port 0 picks a free port, :attr:`EmbeddedBroker.port` tells which, and :meth:`stop`
closes every connection it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

from amqtt.adapters import StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from gateway.errors import BrokerError

__all__ = ["EmbeddedBroker"]

_LISTENER = "default"
_log = logging.getLogger(__name__)

_CONNECT_HEADER = 0x10
_MQTT_311 = 4
_MAX_CONNECT_BYTES = 65536
_CLOSE_GRACE_S = 2.0
# CONNACK, remaining length 2, no session present, return code 1: unacceptable protocol
# version. An MQTT 5 client reads it as "Unsupported protocol version".
_CONNACK_UNACCEPTABLE_PROTOCOL = bytes((0x20, 0x02, 0x00, 0x01))


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()


class RunCredentialsAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt auth plugin admitting exactly one username and password (compared in constant time).

    The broker's configuration holds only the SHA-256 of the password, never the password.
    """

    @dataclass
    class Config:
        """The one user this broker admits."""

        username: str = ""
        password_sha256: str = ""

    async def authenticate(self, *, session: Session) -> bool:
        """True only for the configured username with the matching password."""
        config: RunCredentialsAuth.Config = self.context.config
        username = session.username
        password = session.password
        if not config.username or username is None or password is None:
            return False
        user_ok = hmac.compare_digest(username.encode("utf-8"), config.username.encode("utf-8"))
        password_ok = hmac.compare_digest(_digest(password), bytes.fromhex(config.password_sha256))
        return user_ok and password_ok


class EmbeddedBroker:
    """An amqtt MQTT 3.1.1 broker on ``host:port``, running in a background thread.

    ``port=0`` binds a free port. The credentials are generated per instance unless given;
    the password never appears in ``repr()``. A connection that sends no complete CONNECT
    within ``connect_timeout`` seconds is closed. Use as a context manager or call
    :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self._port = port
        self.connect_timeout = connect_timeout
        self._username = username or f"icvgw-demo-{secrets.token_hex(4)}"
        self._password = password or secrets.token_urlsafe(24)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # --- what clients need --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; the bound port once started when constructed with ``port=0``."""
        return self._port

    @property
    def username(self) -> str:
        """The one username this broker admits."""
        return self._username

    @property
    def password(self) -> str:
        """The password for :attr:`username`. Pass it to clients; never print it."""
        return self._password

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``, without credentials (safe to print)."""
        return f"mqtt://{self._netloc()}"

    @property
    def client_url(self) -> str:
        """``mqtt://USER:PASSWORD@HOST:PORT`` (percent-encoded) for clients. Never print it."""
        user = quote(self._username, safe="")
        password = quote(self._password, safe="")
        return f"mqtt://{user}:{password}@{self._netloc()}"

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.url}, user={self._username!r}, {state})"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker; returns once its socket is listening for MQTT connections.

        Raises :class:`~gateway.errors.BrokerError` if it is already running, cannot bind
        its port or is not listening within ``timeout`` seconds (the thread is then gone).
        """
        if self._thread is not None:
            raise BrokerError(f"embedded broker at {self.url} is already running")
        self._ready.clear()
        self._failure = None
        thread = threading.Thread(
            target=self._run, name=f"icvgw-embedded-broker-{self._port}", daemon=True
        )
        self._thread = thread
        thread.start()
        started = self._ready.wait(timeout)
        if started and self._failure is None:
            return
        self._request_stop()
        thread.join(timeout)
        if not thread.is_alive():
            self._thread = None  # else stop() can still end it once its loop runs
        if self._failure is not None:
            raise BrokerError(
                f"embedded broker did not start on {self.url}: {self._failure}"
            ) from self._failure
        raise BrokerError(f"embedded broker did not listen on {self.url} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect every client, close the socket and join the thread. Idempotent.

        Raises :class:`~gateway.errors.BrokerError` if the thread does not end within
        ``timeout`` seconds or the shutdown itself failed.
        """
        thread = self._thread
        if thread is None:
            return
        self._request_stop()
        thread.join(timeout)
        if thread.is_alive():
            raise BrokerError(f"embedded broker at {self.url} did not stop within {timeout}s")
        self._thread = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise BrokerError(f"embedded broker at {self.url} failed: {failure}") from failure

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the broker thread --------------------------------------------------------------

    def _request_stop(self) -> None:
        loop, event = self._loop, self._stop_requested
        if loop is None or event is None:
            return
        # RuntimeError: the loop already closed, the thread is ending by itself.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to start()/stop() in the caller's thread
            self._failure = exc
        finally:
            self._loop = None
            self._stop_requested = None
            self._ready.set()

    def _broker_config(self) -> BrokerConfig:
        plugin = f"{RunCredentialsAuth.__module__}.{RunCredentialsAuth.__qualname__}"
        config: dict[str, Any] = {
            # Connections come from our own acceptor (see _serve), not from an amqtt server.
            "listeners": {_LISTENER: {"type": "external"}},
            # Only the run's credentials. No $SYS plugin (it needs psutil and warns), no
            # packet logger (it would log CONNECT packets, passwords included).
            "plugins": {
                plugin: {
                    "username": self._username,
                    "password_sha256": _digest(self._password).hex(),
                }
            },
        }
        return BrokerConfig.from_dict(config)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        self._stop_requested = stop_requested
        broker = Broker(self._broker_config())
        timeout = self.connect_timeout

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _serve_connection(broker, reader, writer, timeout)

        await broker.start()
        try:
            acceptor = _Acceptor(_listen(self.host, self._port), handle)
            try:
                self._port = acceptor.port
                threading.current_thread().name = f"icvgw-embedded-broker-{self._port}"
                self._ready.set()
                await stop_requested.wait()
            finally:
                acceptor.stop_accepting()
                try:
                    await broker.shutdown()
                finally:
                    await acceptor.close_all()
        except BaseException:
            if broker.transitions.state == "started":
                await broker.shutdown()
            raise


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (0: a free port)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    listener = socket.create_server((host, port), family=family, backlog=128)
    listener.setblocking(False)
    return listener


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Acceptor:
    """Accepts TCP connections on a socket of ours and runs ``handle`` for each.

    Not ``asyncio.start_server``: on Python 3.11 a connection accepted in the same loop
    iteration as ``Server.close()`` fails in transport creation and its socket leaks
    (ResourceWarning, and the client never sees the close). Here a connection is owned from
    the moment it is accepted, so :meth:`close_all` can close every one.
    """

    def __init__(self, listener: socket.socket, handle: Handler) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        self._handle = handle
        self._closing = False
        self._unowned: set[socket.socket] = set()  # accepted, no stream around it yet
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int = listener.getsockname()[1]
        self._loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again on next wake-up
                _log.warning("embedded broker: accept failed: %s", exc)
                return
            conn.setblocking(False)
            self._unowned.add(conn)
            task = self._loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        if self._closing:
            self._unowned.discard(conn)
            conn.close()
            return
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        finally:
            self._unowned.discard(conn)
        task = asyncio.current_task()
        assert task is not None
        self._writers[task] = writer
        try:
            await self._handle(reader, writer)
        except OSError as exc:
            _log.info("embedded broker: connection ended: %s", exc)
        except Exception:
            _log.exception("embedded broker: connection failed")
        finally:
            del self._writers[task]
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already accepted go on."""
        self._closing = True
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()

    async def close_all(self) -> None:
        """Close every connection and wait for its handler, so no socket outlives the loop.

        Connections amqtt still owns have ended with its shutdown; what is left here has
        not sent a complete CONNECT. Closing the socket ends their read; a handler still
        running after a grace period is cancelled.
        """
        self._closing = True
        for writer in self._writers.values():
            writer.close()
        if self._tasks:
            _, stuck = await asyncio.wait(set(self._tasks), timeout=_CLOSE_GRACE_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        for conn in self._unowned:  # accepted by a handler that never ran
            conn.close()
        self._unowned.clear()


async def _serve_connection(
    broker: Broker,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connect_timeout: float,
) -> None:
    """Hand one TCP connection to amqtt once its first packet is a 3.1.1 CONNECT.

    amqtt's 3.1.1 decoder misreads an MQTT 5 CONNECT and then waits for bytes that never
    come, so the client would hang until its own timeout. Here such a client gets the
    answer MQTT 5 prescribes for a 3.1.1-only server (CONNACK, return code 1) and the
    connection is closed. A connection that sends no complete CONNECT within
    ``connect_timeout`` seconds is closed too.
    """
    try:
        first = await asyncio.wait_for(_read_first_packet(reader), connect_timeout)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
        _log.info("embedded broker: closing a connection without a valid CONNECT: %s", exc)
        return
    if _protocol_level(first) != _MQTT_311:
        _log.warning(
            "embedded broker: refused a client that is not MQTT 3.1.1 (protocol level %s); "
            "connect with MQTT 3.1.1",
            _protocol_level(first),
        )
        writer.write(_CONNACK_UNACCEPTABLE_PROTOCOL)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return
    await broker.external_connected(
        _ReplayingReader(reader, first), StreamWriterAdapter(writer), _LISTENER
    )


async def _read_first_packet(reader: asyncio.StreamReader) -> bytes:
    """The whole first MQTT packet; ValueError unless it is a CONNECT of sane size."""
    header = await reader.readexactly(1)
    if header[0] != _CONNECT_HEADER:
        raise ValueError(f"first packet is not CONNECT (header 0x{header[0]:02x})")
    length_bytes = bytearray()
    length = 0
    for shift in range(0, 28, 7):
        byte = (await reader.readexactly(1))[0]
        length_bytes.append(byte)
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise ValueError("malformed remaining length")
    if length > _MAX_CONNECT_BYTES:
        raise ValueError(f"CONNECT of {length} bytes is too large")
    return header + bytes(length_bytes) + await reader.readexactly(length)


def _protocol_level(connect: bytes) -> int | None:
    """The protocol level byte of a CONNECT packet (4 for MQTT 3.1.1, 5 for MQTT 5)."""
    offset = 1
    while connect[offset] & 0x80:
        offset += 1
    offset += 1  # past the remaining length
    if len(connect) < offset + 2:
        return None
    name_length = int.from_bytes(connect[offset : offset + 2], "big")
    level_at = offset + 2 + name_length
    return connect[level_at] if level_at < len(connect) else None


class _ReplayingReader:
    """amqtt's reader adapter over a stream, first returning bytes already read from it."""

    def __init__(self, reader: asyncio.StreamReader, replay: bytes) -> None:
        self._reader = reader
        self._replay = replay

    async def read(self, n: int = -1) -> bytes:
        """``n`` bytes exactly (``-1``: up to end of stream), the replayed ones first."""
        head = b""
        if self._replay:
            cut = len(self._replay) if n < 0 else n
            head, self._replay = self._replay[:cut], self._replay[cut:]
        if n < 0:
            return head + await self._reader.read(-1)
        if len(head) < n:
            head += await self._reader.readexactly(n - len(head))
        return head

    def feed_eof(self) -> None:
        """Mark the end of the stream (amqtt calls it when a connection is torn down)."""
        self._reader.feed_eof()
