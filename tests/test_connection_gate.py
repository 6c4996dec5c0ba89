"""The rules behind the connection bounds, one by one, and the systemd units that must leave them room.

Why separate from the loopback flood test: that one shows the whole server survives; these
pin each rule (per-peer and total bounds, who is evicted and when, the fd cap, the log
limiter's counting) so a change to one is caught by name, in milliseconds.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.config import ConnectionLimits
from server.connection_guard import EVICT_MIN_AGE_S, ConnectionGate, peer_key
from server.errors import ConfigError
from server.log_limits import RepeatLimiter

REPO = Path(__file__).resolve().parents[1]
LIMITS = ConnectionLimits(max_connections=8, max_connections_per_ip=4, max_handshakes=3, max_handshakes_per_ip=2,
                          fd_reserve=16)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _open(gate: ConnectionGate, sockets: list[socket.socket], key: str, now: float) -> int:
    sock = socket.socket()
    sockets.append(sock)
    gate.opened(sock.fileno(), key, sock, now)
    return sock.fileno()


def test_per_peer_and_total_handshake_bounds_and_eviction_of_the_oldest(sockets: list[socket.socket]) -> None:
    gate = ConnectionGate(LIMITS, fd_limit=1024)
    a1 = _open(gate, sockets, "10.0.0.1", 0.0)
    _open(gate, sockets, "10.0.0.1", 0.0)
    assert "max_handshakes_per_ip" in (gate.refusal("10.0.0.1", 0.1)[0] or "")
    _open(gate, sockets, "10.0.0.2", 0.1)
    # total full and every handshake younger than the eviction age: the newcomer is refused
    assert "max_handshakes" in (gate.refusal("10.0.0.3", 0.2)[0] or "")
    reason, victim = gate.refusal("10.0.0.3", EVICT_MIN_AGE_S + 0.01)
    assert reason is None and victim is not None and victim[0] == a1  # the oldest is dropped for it
    gate.drop_handshake(*victim, "evicted")
    assert gate.handshaking == 2 and gate.open == 3 and gate.stats["evicted"] == 1


def test_an_authenticated_connection_leaves_the_handshake_count_and_closing_frees_its_slot(
        sockets: list[socket.socket]) -> None:
    gate = ConnectionGate(LIMITS, fd_limit=1024)
    first = _open(gate, sockets, "10.0.0.1", 0.0)
    gate.established(first)
    assert (gate.open, gate.handshaking) == (1, 0)
    gate.drop_handshake(first, gate._slots[first], "handshake_timeouts")  # a deadline after success is a no-op
    assert gate.stats["handshake_timeouts"] == 0
    for _ in range(3):
        gate.established(_open(gate, sockets, "10.0.0.1", 0.0))
    assert "max_connections_per_ip" in (gate.refusal("10.0.0.1", 1.0)[0] or "")
    gate.closed(first, sockets[0])
    assert gate.open == 3 and gate.refusal("10.0.0.1", 1.0) == (None, None)


def test_the_total_is_capped_under_the_fd_limit_and_an_unusable_limit_is_refused_at_start() -> None:
    assert ConnectionGate(ConnectionLimits(max_connections=1024, fd_reserve=128), fd_limit=256).max_connections == 128
    with pytest.raises(ConfigError, match="LimitNOFILE"):
        ConnectionGate(ConnectionLimits(fd_reserve=128), fd_limit=130)


def test_peers_are_counted_by_ipv4_address_and_ipv6_slash_64() -> None:
    assert peer_key("192.0.2.7") == "192.0.2.7"
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")


def test_repeated_lines_are_limited_per_template_and_the_next_one_says_how_many_were_left_out() -> None:
    clock = [0.0]
    limiter = RepeatLimiter(burst=3, window_s=10.0, clock=lambda: clock[0])

    def record(peer: str) -> logging.LogRecord:
        return logging.LogRecord("mor.server.connections", logging.WARNING, __file__, 1,
                                 "refused a connection from %s: %s", (peer, "full"), None)

    passed = [limiter.filter(record(f"10.0.0.{i}")) for i in range(100)]
    assert passed.count(True) == 3
    other = logging.LogRecord("mor.server", logging.WARNING, __file__, 1, "something else", (), None)
    assert limiter.filter(other)  # another kind has its own budget
    clock[0] = 10.5
    late = record("10.0.0.200")
    assert limiter.filter(late)
    assert "97 more like this" in late.getMessage() and "10.0.0.200" in late.getMessage()


def _unit(name: str) -> dict[str, list[str]]:
    """Directive -> its values in order (systemd units repeat keys, which configparser refuses)."""
    values: dict[str, list[str]] = {}
    for line in (REPO / "deploy" / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize("name", ["mor-server.service", "mor-keyholder.service", "mor-agent.service"])
def test_systemd_units_raise_the_fd_limit_and_are_hardened(name: str) -> None:
    unit = _unit(name)
    needed = ConnectionLimits().max_connections + ConnectionLimits().fd_reserve
    if name != "mor-agent.service":  # the serving parties: the default connection bounds must fit
        assert int(unit["LimitNOFILE"][-1]) >= needed
    for directive in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                      "ProtectControlGroups", "RestrictAddressFamilies", "RestrictNamespaces", "RestrictSUIDSGID",
                      "LockPersonality", "SystemCallFilter", "CapabilityBoundingSet", "UMask", "TasksMax"):
        assert directive in unit, f"{name}: {directive} missing"
    assert unit["ProtectSystem"] == ["strict"] and unit["CapabilityBoundingSet"] == [""]
    assert "MemoryDenyWriteExecute" not in unit  # torch generates kernels at run time
