"""The one harness that starts a consortium on this machine: used by the demo, the benchmarks and the tests.

=======================  ==================================================================
:mod:`.pki`              a consortium CA and its parties' certificates (loopback SANs)
:mod:`.configs`          server and key-holder TOML configs (one writer for every run)
:mod:`.processes`        ``mor`` subprocesses with logs: start, probe (mTLS 200 or TCP), stop
:mod:`.services`         server / key holder as processes, or the server in this process
:mod:`.netns`            several hosts on one machine: a network namespace per party, one bridge,
                         a link cut and restored (root and iproute2; imported on its own)
=======================  ==================================================================

What a run adds on top is its own: the demo provisions members with private data and
trains them (:mod:`sim.demo.provision`), the bench drives synthetic agents
(:mod:`sim.bench.fleet`), the tests add pytest fixtures (``tests/helpers``).
"""

from sim.harness.configs import config_port, keyholder_config, server_config, write_toml
from sim.harness.pki import ConsortiumPKI, Party
from sim.harness.processes import (
    LOOPBACK,
    OFFLINE_ENV,
    START_TIMEOUT_S,
    ManagedProcess,
    ProcessGroup,
    free_port,
    mor_command,
    start_mor,
    start_process,
    wait_listening,
    wait_ready,
)
from sim.harness.services import InProcessServer, start_keyholder, start_server

__all__ = [
    "write_toml",
    "LOOPBACK",
    "OFFLINE_ENV",
    "START_TIMEOUT_S",
    "ConsortiumPKI",
    "InProcessServer",
    "ManagedProcess",
    "Party",
    "ProcessGroup",
    "config_port",
    "free_port",
    "keyholder_config",
    "mor_command",
    "server_config",
    "start_keyholder",
    "start_mor",
    "start_process",
    "start_server",
    "wait_listening",
    "wait_ready",
]
