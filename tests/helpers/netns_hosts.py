"""A fused-only consortium whose parties are separate hosts on one bridge (:mod:`sim.harness.netns`).

    network = netns_network()                          # skips (or fails under CI=true) without namespaces
    site = HostedConsortium.build(tmp_path, network)   # PKI with the hosts' addresses, policy, configs
    site.train_agents()                                # tiny DP reward models, one per member
    keyholder = site.start("keyholder", [...])         # ``ip netns exec <ns> mor ...``

Everything is the product as deployed: ``mor keyholder serve``, ``mor server run`` and
``mor client run`` each in its own namespace, reaching each other by address over mutual TLS;
the serving certificates name those addresses (IP SANs), so a client checks them exactly as it
would a production host. The test reads the server's store (SQLite, read-only) and the audit
logs from the shared file system only; it never joins the network itself.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corpus.builders import build_client_pairs
from corpus.store import save_pairs
from crypto.pki import init_ca
from helpers.consortium import write_policy
from helpers.pki import TestPKI
from helpers.procs import REPO_ROOT
from mor_cli.main import main
from sim.harness import ManagedProcess, keyholder_config, mor_command, server_config, start_process, write_toml
from sim.harness.netns import Network, unavailable_reason

SERVER, KEYHOLDER = "server", "keyholder"
ADDRESSES = {SERVER: "10.231.0.1", KEYHOLDER: "10.231.0.2"}
SERVER_PORT, KEYHOLDER_PORT = 8443, 8444
MEMBERS = (("alice", "medical", "10.231.0.11"), ("bob", "finance", "10.231.0.12"), ("carol", "medical", "10.231.0.13"))


def netns_network() -> Network:
    """A fresh network for this test, or a skip saying why namespaces are unavailable (a failure under CI=true)."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the multi-host test, but: {reason}")
        pytest.skip(f"network namespaces unavailable: {reason}")
    return Network.create()


@dataclass
class HostedConsortium:
    """PKI, policy and every party's config for hosts on ``network`` (see the module docstring)."""

    root: Path
    network: Network
    pki: TestPKI
    policy: Path
    agent_configs: dict[str, Path] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)

    @classmethod
    def build(cls, root: Path, network: Network, *, deadline_s: float) -> HostedConsortium:
        pki = TestPKI(init_ca(root / "ca", "testnet"))
        for name in (SERVER, KEYHOLDER):
            network.add_host(name, ADDRESSES[name])
            pki.issue(name, name, ips=(ADDRESSES[name],))
        policy = write_policy(root / "policy.toml", mode="fused-only", pilot=True)
        text = policy.read_text("utf-8").replace("quorum = 1", "quorum = 2")
        policy.write_text(text.replace("deadline_s = 60", f"deadline_s = {deadline_s:g}"), "utf-8")
        site = cls(root, network, pki, policy)
        for name, _, address in MEMBERS:
            network.add_host(name, address)
        return site

    @property
    def server_url(self) -> str:
        return f"https://{ADDRESSES[SERVER]}:{SERVER_PORT}"

    def identity(self, name: str) -> str:
        return self.pki.identity("client", name)

    # -- configs --------------------------------------------------------------------------------------
    def keyholder_config(self) -> Path:
        return keyholder_config(self.root / "keyholder.toml", data=self.root / "keyholder-data",
                                tls=self.pki.tls(KEYHOLDER), server_identity=self.pki.server.identity,
                                port=KEYHOLDER_PORT, policy=self.policy, host=ADDRESSES[KEYHOLDER])

    def server_config(self) -> Path:
        return server_config(self.root / "server.toml", data=self.root / "server-data", tls=self.pki.tls(SERVER),
                             policy=self.policy, port=SERVER_PORT, ckks_secret=False, host=ADDRESSES[SERVER],
                             keyholder_url=f"https://{ADDRESSES[KEYHOLDER]}:{KEYHOLDER_PORT}")

    def training_config(self, model_path: Path, **overrides: object) -> Path:
        return write_toml(self.root / "training.toml", {"training": {
            "model_path": str(model_path), "output_dir": str(self.root / "out"), "router": "uniform",
            "n_prompts": 4, "group_size": 2, "per_device_batch": 2, "max_completion_length": 4,
            "enrol_timeout_s": 180, **overrides}})

    def train_agents(self) -> None:
        """Each member: a config pointing at the server's address, then a tiny DP reward model (``mor client train``).

        ``tiny-vlt`` needs no pretrained weights; one Poisson batch of all 40 pairs keeps the
        accountant's noise search to a second (sampling rate 1).
        """
        for name, style, _ in MEMBERS:
            party = self.pki.issue(name)
            data = self.root / f"{name}-data"
            save_pairs(build_client_pairs(style, 40, seed=1), data)
            out = self.root / f"{name}.toml"
            assert main(["client", "init-config", "--out", str(out), "--server-url", self.server_url,
                         "--server-identity", self.pki.server.identity, "--policy", str(self.policy),
                         "--cert", str(party.cert), "--key", str(party.key), "--ca", str(self.pki.ca_cert),
                         "--crl", str(self.pki.crl), "--data-dir", str(data), "--state-dir",
                         str(self.root / f"{name}-state"), "--epsilon", "6", "--delta", "1e-5", "--arch", "tiny-vlt",
                         "--model-param", "dim=16", "--model-param", "layers=1", "--insecure-pilot"]) == 0
            text = out.read_text("utf-8").replace("epochs = 5", "epochs = 1")
            out.write_text(text.replace("batch_size = 64", "batch_size = 40"), "utf-8")
            with pytest.warns(UserWarning):  # insecure_pilot: seeded noise, said loudly
                assert main(["client", "train", "--config", str(out), "--quiet"]) == 0
            self.agent_configs[name] = out

    # -- processes ------------------------------------------------------------------------------------
    def start(self, host: str, mor_args: Sequence[str]) -> ManagedProcess:
        """``mor <mor_args>`` inside ``host``'s namespace (log: ``<root>/<host>.log``)."""
        process = start_process(host, self.network.exec_argv(host, mor_command(mor_args)),
                                log=self.root / f"{host}.log", cwd=REPO_ROOT)
        self.processes.append(process)
        return process

    def start_agent(self, name: str) -> ManagedProcess:
        return self.start(name, ["client", "run", "--config", str(self.agent_configs[name]), "--quiet"])

    def stop_all(self, grace_s: float = 30.0) -> dict[str, int]:
        """SIGTERM the server, then the members, then the key holder; name -> exit code.

        The server first: it finishes the round in flight (the members still answer it, the key
        holder still opens the fused sum) and closes its log; a member stopped first would make
        that round wait out its whole deadline.
        """
        rank = {SERVER: 0, KEYHOLDER: 2}
        return {p.name: p.stop(grace_s) for p in sorted(self.processes, key=lambda p: rank.get(p.name, 1))}

    # -- the server's store, read-only --------------------------------------------------------------------
    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        db = self.root / "server-data" / "state.db"
        if not db.exists():
            return []
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            try:
                return list(conn.execute(sql, args))
            except sqlite3.OperationalError:  # tables not created yet
                return []

