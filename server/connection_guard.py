"""Bounded connections on an API port, so that outsiders without a certificate cannot deny service.

Why below uvicorn: the TLS handshake, and with it the client-certificate check, starts only
once a connection has been accepted, and asyncio allocates a 256 KiB TLS buffer for every
accepted connection. ``accept()`` is therefore the one place where a stranger can be refused
cheaply. :class:`GuardedListener` is the listening socket handed to uvicorn; its ``accept``
asks a :class:`ConnectionGate` and closes (with a TCP reset) every connection past a bound
before asyncio ever sees it:

* connections in total and per peer (an IPv4 address or an IPv6 /64), the total capped at the
  process's file-descriptor limit minus a reserve, so ``accept`` never runs into EMFILE (which
  made asyncio log thousands of tracebacks a second while every new client timed out);
* TLS handshakes in progress, in total and per peer. When the total is full the oldest
  handshake older than :data:`EVICT_MIN_AGE_S` is dropped for the newcomer: silent sockets
  from many addresses cannot crowd out an agent whose handshake takes milliseconds;
* a handshake deadline: a connection not authenticated in time is shut down.

Authenticated connections are bounded in time by the HTTP protocol (:mod:`server.mtls`: idle
timeout), which also tells the gate when a handshake completed. After churn the gate's
:class:`~server.memory_return.HeapReturner` frees what failed handshakes left and hands it
back to the operating system, so memory returns near its baseline after a wave.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import struct
import time
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from server.config import ConnectionLimits
from server.errors import ConfigError
from server.memory_return import HeapReturner

log = logging.getLogger("mor.server.connections")
EVICT_MIN_AGE_S = 0.5  # a handshake younger than this is never dropped for a newcomer
MAX_REFUSALS_PER_ACCEPT = 256  # then yield to the event loop, even under a sustained flood
MIN_CONNECTIONS = 8
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with RST, no TIME_WAIT


def peer_key(host: str) -> str:
    """What per-peer bounds count by: the IPv4 address, or the IPv6 /64 (one site's usual allocation)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (OSError, ValueError) as exc:
            log.warning("could not raise the file-descriptor limit from %d to %d: %s", soft, ceiling, exc)
    return wanted if soft == resource.RLIM_INFINITY else int(soft)


@dataclass(eq=False)
class _Slot:
    key: str
    opened: float
    sock: weakref.ReferenceType[socket.socket]
    handshaking: bool = True
    authenticated: bool = False


class ConnectionGate:
    """The bookkeeping behind :class:`GuardedListener`: who holds which connection, and what to refuse.

    Used from the event-loop thread only (accept, close and the protocol's callbacks all run there).
    """

    def __init__(self, limits: ConnectionLimits, *, fd_limit: int | None = None) -> None:
        wanted = limits.max_connections + limits.fd_reserve
        soft = _raise_fd_limit(wanted) if fd_limit is None else fd_limit
        room = soft - limits.fd_reserve
        if room < MIN_CONNECTIONS:
            raise ConfigError(f"the file-descriptor limit ({soft}) leaves {room} connections after "
                              f"[connections].fd_reserve = {limits.fd_reserve}: raise LimitNOFILE (at least "
                              f"{wanted}) or lower fd_reserve")
        self.limits = limits
        self.max_connections = min(limits.max_connections, room)
        self.max_handshakes = min(limits.max_handshakes, self.max_connections)
        if self.max_connections < limits.max_connections:
            log.warning("file-descriptor limit %d: at most %d connections instead of max_connections = %d "
                        "(raise LimitNOFILE to at least %d)", soft, self.max_connections, limits.max_connections,
                        wanted)
        self.stats: Counter[str] = Counter()
        self._slots: dict[int, _Slot] = {}
        self._per_peer: Counter[str] = Counter()
        self._handshaking: OrderedDict[int, _Slot] = OrderedDict()  # oldest first
        self._handshaking_per_peer: Counter[str] = Counter()
        self.heap = HeapReturner()

    @property
    def open(self) -> int:
        return len(self._slots)

    @property
    def handshaking(self) -> int:
        return len(self._handshaking)

    def refusal(self, key: str, now: float) -> tuple[str | None, tuple[int, _Slot] | None]:
        """Why a new connection from ``key`` must be refused (None: admit), and a handshake to drop for it."""
        limits = self.limits
        if len(self._slots) >= self.max_connections:
            return f"{len(self._slots)} connections open (max_connections)", None
        if self._per_peer[key] >= limits.max_connections_per_ip:
            return f"{self._per_peer[key]} connections from this peer (max_connections_per_ip)", None
        if self._handshaking_per_peer[key] >= limits.max_handshakes_per_ip:
            return f"{self._handshaking_per_peer[key]} handshakes from this peer (max_handshakes_per_ip)", None
        if len(self._handshaking) < self.max_handshakes:
            return None, None
        oldest_fd, oldest = next(iter(self._handshaking.items()))
        if now - oldest.opened < EVICT_MIN_AGE_S:
            return f"{len(self._handshaking)} handshakes in progress (max_handshakes)", None
        return None, (oldest_fd, oldest)

    def opened(self, fd: int, key: str, sock: socket.socket, now: float) -> _Slot:
        stale = self._slots.get(fd)
        if stale is not None:  # its socket was never closed through us (collected): the number is free again
            self._forget(fd, stale)
        slot = _Slot(key, now, weakref.ref(sock))
        self._slots[fd] = slot
        self._handshaking[fd] = slot
        self._per_peer[key] += 1
        self._handshaking_per_peer[key] += 1
        self.stats["accepted"] += 1
        return slot

    def established(self, fd: int) -> None:
        """The TLS handshake on ``fd`` completed with a verified certificate: no longer a handshake."""
        slot = self._slots.get(fd)
        if slot is not None and slot.handshaking:
            slot.authenticated = True
            self._end_handshake(fd, slot)

    def drop_handshake(self, fd: int, slot: _Slot, why: str) -> None:
        """Shut down a connection still in its handshake (evicted or past its deadline)."""
        if self._slots.get(fd) is not slot or not slot.handshaking:
            return
        self._end_handshake(fd, slot)
        self.stats[why] += 1
        sock = slot.sock()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # its transport reads EOF and closes it

    def closed(self, fd: int, sock: socket.socket) -> None:
        slot = self._slots.get(fd)
        if slot is None or slot.sock() is not sock:
            return
        self._forget(fd, slot)
        self.heap.closed(authenticated=slot.authenticated)

    def _end_handshake(self, fd: int, slot: _Slot) -> None:
        slot.handshaking = False
        self._handshaking.pop(fd, None)
        self._handshaking_per_peer[slot.key] -= 1
        if self._handshaking_per_peer[slot.key] <= 0:
            del self._handshaking_per_peer[slot.key]

    def _forget(self, fd: int, slot: _Slot) -> None:
        if slot.handshaking:
            self._end_handshake(fd, slot)
        del self._slots[fd]
        self._per_peer[slot.key] -= 1
        if self._per_peer[slot.key] <= 0:
            del self._per_peer[slot.key]


class GuardedConnection(socket.socket):
    """An accepted connection that gives its slot back to the gate when asyncio closes it."""

    __slots__ = ("_gate", "_gate_fd")
    _gate: ConnectionGate | None
    _gate_fd: int

    def close(self) -> None:
        gate: ConnectionGate | None = getattr(self, "_gate", None)
        if gate is not None:
            self._gate = None
            gate.closed(self._gate_fd, self)
        super().close()

    def detach(self) -> int:
        gate: ConnectionGate | None = getattr(self, "_gate", None)
        if gate is not None:
            self._gate = None
            gate.closed(self._gate_fd, self)
        return super().detach()


class GuardedListener(socket.socket):
    """The listening socket uvicorn serves on: ``accept`` admits only what the gate allows."""

    __slots__ = ("gate", "_exhausted_until")
    gate: ConnectionGate
    _exhausted_until: float

    def accept(self) -> tuple[socket.socket, Any]:
        gate = self.gate
        for _ in range(MAX_REFUSALS_PER_ACCEPT):
            now = time.monotonic()
            if now < self._exhausted_until:
                raise ConnectionAbortedError("file descriptors exhausted; retrying shortly")
            try:
                fd, address = self._accept()  # type: ignore[attr-defined]
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    # asyncio pauses accepting for a second on this error; refuse its retries meanwhile
                    self._exhausted_until = now + 1.0
                    log.error("file descriptors exhausted (%s): new connections wait; raise LimitNOFILE or lower "
                              "[connections].max_connections", exc.strerror)
                raise
            key = peer_key(str(address[0]))
            reason, victim = gate.refusal(key, now)
            if reason is not None:
                gate.stats["refused"] += 1
                _reset(socket.socket(self.family, self.type, self.proto, fileno=fd))
                log.warning("refused a connection from %s: %s", key, reason)
                continue
            if victim is not None:
                gate.drop_handshake(*victim, "evicted")
            conn = GuardedConnection(self.family, self.type, self.proto, fileno=fd)
            conn._gate, conn._gate_fd = gate, fd
            slot = gate.opened(fd, key, conn, now)
            asyncio.get_running_loop().call_later(gate.limits.handshake_timeout_s, gate.drop_handshake, fd, slot,
                                                  "handshake_timeouts")
            return conn, address
        raise BlockingIOError(errno.EAGAIN, "yielding after many refusals")


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    sock.close()


def listen(host: str, port: int, gate: ConnectionGate) -> GuardedListener:
    """A bound (not yet listening) :class:`GuardedListener` for ``host:port``; asyncio calls ``listen``."""
    family, kind, proto, _name, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    sock = GuardedListener(family, kind, proto)
    sock.gate, sock._exhausted_until = gate, 0.0
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock
