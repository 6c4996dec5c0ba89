"""Several "hosts" on one machine: Linux network namespaces joined by veth pairs on one bridge.

Why: on loopback every party shares one network stack, so a site losing its link cannot be
shown — there is no link. Here each party (server, key holder, every agent) runs in a
namespace of its own with its own address on a private segment, and one party's cable can be
pulled (:meth:`Network.cut`) and plugged back (:meth:`Network.restore`) while the others keep
talking.

Layout (every name carries a per-run token, so runs never share a namespace)::

    <token>-hub:      br0 ── p-<host> (one port per host)         the "switch"
    <token>-<host>:   lo, eth0 = <address>/24  ─veth─  p-<host>    one per party

Only addresses on the segment this module creates are used (``10.231.0.0/24`` by default),
inside namespaces it created itself; the machine's own network is never touched, and nothing
is routed out of the segment. :meth:`Network.cut` sets the host's *switch port* down — the
cable pulled at the switch: the host's ``eth0`` loses carrier, its packets and the ones sent
to it vanish, and neither end is told (TCP finds out by itself, as it does on a real WAN).

Needs root and iproute2 (``ip netns``); :func:`unavailable_reason` says why not, for a test to
skip with. :meth:`Network.close` (also on leaving the ``with`` block) kills whatever still
runs inside the namespaces it created and deletes them; :func:`remove_namespaces` clears those
of a run that died without closing.

    with Network.create(token="mor-1a2b") as net:
        net.add_host("server", "10.231.0.1")
        net.add_host("alice", "10.231.0.11")
        argv = net.exec_argv("server", mor_command(["server", "serve", ...]))   # ip netns exec ...
        net.wait_listening("server", 8443)
        net.cut("alice"); ...; net.restore("alice")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from sim.errors import NetworkSetupError, ProcessTimeoutError
from sim.harness.processes import ManagedProcess

SEGMENT_PREFIX = 24
PROBE = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()"


def _ip(*args: str) -> str:
    """Run ``ip <args>``; NetworkSetupError with its stderr on failure."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetworkSetupError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (not root, no ``ip``, creation refused), or None."""
    if sys.platform != "linux":
        return f"network namespaces are Linux-only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not on PATH"
    probe = f"mor-probe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except NetworkSetupError as exc:
        return f"cannot create a network namespace: {exc}"
    with contextlib.suppress(NetworkSetupError):
        _ip("netns", "delete", probe)
    return None


@dataclass(frozen=True)
class Host:
    """One party's namespace, its address on the segment and its port on the switch."""

    name: str
    namespace: str
    address: str
    port: str  # the switch-side veth, in the hub namespace


@dataclass
class Network:
    """Namespaces created by this run (see the module docstring); build with :meth:`create`."""

    token: str
    hosts: dict[str, Host] = field(default_factory=dict)
    closed: bool = False

    @property
    def hub(self) -> str:
        return f"{self.token}-hub"

    @classmethod
    def create(cls, token: str | None = None) -> Network:
        """The hub namespace with its bridge; hosts are added with :meth:`add_host`."""
        net = cls(token or f"mor-{uuid.uuid4().hex[:8]}")
        _ip("netns", "add", net.hub)
        try:
            _ip("-n", net.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", net.hub, "link", "set", "br0", "up")
        except BaseException:
            net.close()
            raise
        return net

    def add_host(self, name: str, address: str) -> Host:
        """A namespace for ``name`` with ``eth0`` = ``address``/24, plugged into the switch."""
        if name in self.hosts:
            raise NetworkSetupError(f"host {name!r} exists already")
        host = Host(name, f"{self.token}-{name}", address, f"p-{len(self.hosts)}")
        _ip("netns", "add", host.namespace)
        self.hosts[name] = host
        _ip("link", "add", "name", "eth0", "netns", host.namespace, "type", "veth",
            "peer", "name", host.port, "netns", self.hub)
        _ip("-n", self.hub, "link", "set", host.port, "master", "br0")
        _ip("-n", self.hub, "link", "set", host.port, "up")
        _ip("-n", host.namespace, "addr", "add", f"{address}/{SEGMENT_PREFIX}", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        return host

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``name``'s namespace (``ip netns exec`` execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.hosts[name].namespace, *argv]

    def cut(self, name: str) -> None:
        """Pull ``name``'s cable at the switch (its port down)."""
        _ip("-n", self.hub, "link", "set", self.hosts[name].port, "down")

    def restore(self, name: str) -> None:
        """Plug ``name``'s cable back in."""
        _ip("-n", self.hub, "link", "set", self.hosts[name].port, "up")

    def wait_listening(self, name: str, port: int, *, timeout: float = 90.0,
                       alive: ManagedProcess | None = None) -> None:
        """Block until ``name``'s address accepts TCP on ``port``, probed from inside its namespace.

        ``alive``: the process that should be listening; its early exit fails the wait at once.
        """
        host, deadline = self.hosts[name], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if alive is not None and not alive.alive():
                raise alive.failure("exited during start-up")
            probe = subprocess.run(self.exec_argv(name, [sys.executable, "-c", PROBE, host.address, str(port)]),
                                   capture_output=True, timeout=30, check=False)
            if probe.returncode == 0:
                return
            time.sleep(0.3)
        raise ProcessTimeoutError(f"nothing listens on {host.address}:{port} in {host.namespace} after {timeout:.0f} s")

    def pids(self) -> list[int]:
        """Processes still running inside this run's namespaces."""
        found: list[int] = []
        for namespace in [h.namespace for h in self.hosts.values()] + [self.hub]:
            done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30,
                                  check=False)
            found += [int(p) for p in done.stdout.split() if p.isdigit()]
        return found

    def close(self) -> None:
        """Kill what still runs in these namespaces (SIGKILL, by pid), then delete them. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_namespaces(self.token)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def remove_namespaces(token: str) -> list[str]:
    """Delete every namespace named ``<token>-...`` (deleting the hub removes the bridge and all veths)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=False)
    removed = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{token}-"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)
            removed.append(name)
    return removed
