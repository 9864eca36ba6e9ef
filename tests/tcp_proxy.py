"""A TCP forwarder on 127.0.0.1 that tests can partition: for "the network went away" tests.

``TcpProxy((host, port))`` listens on a free 127.0.0.1 port and forwards every
connection it accepts to the target. ``hang()`` stops all bytes in both directions,
on existing and new connections, while keeping every socket open: the client sees
a peer that simply never answers (new connections are still accepted, then
nothing flows). ``resume()`` lets the bytes flow again; ``cut()`` resets every
connection (RST); ``close()`` stops the proxy.

One thread runs a selector loop over every socket. While hung, the connections'
sockets are taken out of the selector, so nothing spins; the control methods
wake the loop through a socket pair and return once it has acted.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: Bytes read at once, and the most held for a side that is not reading.
CHUNK = 64 * 1024
BUFFER_LIMIT = 256 * 1024

#: How long a control method waits for the loop thread to carry it out.
CONTROL_TIMEOUT = 5.0


def _reset_on_close(sock: socket.socket) -> None:
    """Make ``close()`` send RST rather than FIN (SO_LINGER on, zero timeout)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    client: socket.socket
    upstream: socket.socket
    connected: bool = False  # the non-blocking connect to the target has completed
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False
    upstream_eof: bool = False
    upstream_shut: bool = False  # we passed the client's EOF on (SHUT_WR)
    client_shut: bool = False
    closed: bool = False
    registered: dict[socket.socket, int] = field(default_factory=dict)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``hang()``, ``resume()``, ``cut()`` it."""

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.target = target
        family, _, _, _, address = socket.getaddrinfo(
            target[0], target[1], type=socket.SOCK_STREAM
        )[0]
        self._target_family: socket.AddressFamily = family
        self._target_addr: tuple[Any, ...] = address
        self._hung = False
        self._closing = False
        #: The local ports of every connection made to the target (who sent what, as the
        #: target saw it: its peer's port).
        self.upstream_ports: set[int] = set()
        self._links: set[_Link] = set()
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self._host = host
        self._port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy:{self._port}->{target[1]}", daemon=True
        )
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        """A proxy in front of the host and port of ``url`` (``postgresql://...``)."""
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"no host:port in {url!r}")
        return cls((parts.hostname, parts.port))

    # -- what tests use ----------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def hung(self) -> bool:
        return self._hung

    def url_for(self, url: str) -> str:
        """``url`` with its host:port replaced by the proxy's (user, password, path kept)."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{self._host}:{self._port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def hang(self) -> None:
        """From now on no byte moves, either way, on any connection; the sockets stay open."""
        self._control(self._do_hang)

    def resume(self) -> None:
        """Bytes flow again (what was held back is delivered)."""
        self._control(self._do_resume)

    def cut(self) -> None:
        """Reset every open connection (RST to both ends). New ones are still accepted."""
        self._control(self._do_cut)

    def close(self) -> None:
        """Stop listening, drop every connection and end the thread. Idempotent."""
        if not self._thread.is_alive():
            self._teardown()
            return
        self._control(self._do_close)
        self._thread.join(CONTROL_TIMEOUT)

    @property
    def connections(self) -> int:
        """How many proxied connections are open."""
        return len(self._links)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "hung" if self._hung else "flowing"
        return f"<TcpProxy {self._host}:{self._port} -> {self.target[0]}:{self.target[1]} {state}>"

    # -- control: run on the loop thread, the caller waits -------------------------

    def _control(self, action: Callable[[], None]) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the proxy is closed")
        done = threading.Event()
        self._commands.put((action, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if not done.wait(CONTROL_TIMEOUT) and self._thread.is_alive():
            raise RuntimeError("the proxy's thread did not respond")

    def _do_hang(self) -> None:
        self._hung = True

    def _do_resume(self) -> None:
        self._hung = False

    def _do_cut(self) -> None:
        for link in list(self._links):
            self._close_link(link, abrupt=True)

    def _do_close(self) -> None:
        self._closing = True

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                for link in list(self._links):
                    self._update_interest(link)
                for key, mask in self._selector.select():
                    if key.data == "wake":
                        self._run_commands()
                    elif key.data == "accept":
                        self._accept()
                    else:
                        link = key.data
                        if not link.closed:
                            self._service(link, key.fileobj, mask)
        finally:
            self._teardown()
            # Whoever waits on a command must not wait in vain.
            while not self._commands.empty():
                self._commands.get_nowait()[1].set()

    def _run_commands(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while not self._commands.empty():
            action, done = self._commands.get_nowait()
            try:
                action()
            finally:
                done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE; the next readiness event tries again
            client.setblocking(False)
            upstream = socket.socket(self._target_family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, upstream)
            self._links.add(link)
            code = upstream.connect_ex(self._target_addr)
            with contextlib.suppress(OSError):
                self.upstream_ports.add(int(upstream.getsockname()[1]))
            if code == 0:
                link.connected = True
            elif code not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                self._close_link(link, abrupt=True)

    def _wanted(self, link: _Link, sock: socket.socket) -> int:
        """The events ``sock`` waits for now (0: take it out of the selector)."""
        if link.closed:
            return 0
        if sock is link.upstream and not link.connected:
            return selectors.EVENT_WRITE  # completing the connect is not a byte flowing
        if self._hung or not link.connected:
            return 0
        if sock is link.client:
            reading = not link.client_eof and len(link.to_upstream) < BUFFER_LIMIT
            writing = bool(link.to_client)
        else:
            reading = not link.upstream_eof and len(link.to_client) < BUFFER_LIMIT
            writing = bool(link.to_upstream)
        return (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if writing else 0)

    def _update_interest(self, link: _Link) -> None:
        for sock in (link.client, link.upstream):
            wanted = self._wanted(link, sock)
            current = link.registered.get(sock, 0)
            if wanted == current:
                continue
            if current and wanted:
                self._selector.modify(sock, wanted, link)
            elif wanted:
                self._selector.register(sock, wanted, link)
            else:
                self._selector.unregister(sock)
            if wanted:
                link.registered[sock] = wanted
            else:
                link.registered.pop(sock, None)

    def _service(self, link: _Link, sock: object, mask: int) -> None:
        from_client = sock is link.client
        if not from_client and not link.connected:
            error = link.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._close_link(link, abrupt=True)  # the target refused: so do we
                return
            link.connected = True
            return
        this = link.client if from_client else link.upstream
        inbound = link.to_upstream if from_client else link.to_client
        outbound = link.to_client if from_client else link.to_upstream
        try:
            if mask & selectors.EVENT_READ:
                data = this.recv(CHUNK)
                if data:
                    inbound += data
                elif from_client:
                    link.client_eof = True
                else:
                    link.upstream_eof = True
            if mask & selectors.EVENT_WRITE and outbound:
                sent = this.send(outbound)
                del outbound[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close_link(link, abrupt=True)  # a reset on one side resets the other
            return
        self._settle(link)

    def _settle(self, link: _Link) -> None:
        """Pass each EOF on once its side's bytes are delivered; close when both are."""
        try:
            if link.client_eof and not link.to_upstream and not link.upstream_shut:
                link.upstream.shutdown(socket.SHUT_WR)
                link.upstream_shut = True
            if link.upstream_eof and not link.to_client and not link.client_shut:
                link.client.shutdown(socket.SHUT_WR)
                link.client_shut = True
        except OSError:
            self._close_link(link, abrupt=True)
            return
        if link.upstream_shut and link.client_shut:
            self._close_link(link, abrupt=False)

    def _close_link(self, link: _Link, *, abrupt: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        for sock in (link.client, link.upstream):
            if sock in link.registered:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            if abrupt:
                _reset_on_close(sock)
            sock.close()
        link.registered.clear()

    def _teardown(self) -> None:
        for link in list(self._links):
            self._close_link(link, abrupt=True)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        with contextlib.suppress(RuntimeError):
            self._selector.close()
