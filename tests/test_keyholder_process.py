"""fused-only: the key holder and the server as two processes, and who can decrypt what.

The server process must hold no CKKS secret key (it fetched the key holder's public context at
start-up and serves only that); only the server's certificate identity may ask the key holder
to decrypt, and every decryption is counted and is an entry in the key holder's own audit log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tenseal as ts
from helpers.consortium import Agent, actions, audit_report, server_data, write_policy
from helpers.pki import TestPKI, make_pki
from helpers.procs import (
    ServiceProcess,
    free_port,
    start_keyholder,
    start_server,
    write_keyholder_config,
    write_server_config,
)

from crypto.ckks import load_public_context
from server.keyholder.client import KeyHolderClient

pytestmark = pytest.mark.timeout(180)


@dataclass
class FusedWorld:
    pki: TestPKI
    keyholder: ServiceProcess
    keyholder_config: Path
    server: ServiceProcess
    server_config: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FusedWorld]:
    tmp = tmp_path_factory.mktemp("fused")
    pki = make_pki(tmp)
    keyholder_config = write_keyholder_config(tmp, pki, port=free_port())
    policy = write_policy(tmp / "policy.toml", mode="fused-only")
    with start_keyholder(keyholder_config) as keyholder:
        server_config = write_server_config(tmp, pki, policy=policy, port=free_port(), keyholder_url=keyholder.base_url)
        with start_server(server_config) as server:
            yield FusedWorld(pki, keyholder, keyholder_config, server, server_config)
        assert server.proc.returncode == 0, server.log_text()
    assert keyholder.proc.returncode == 0, keyholder.log_text()
    report = audit_report(keyholder_config, "keyholder")
    assert report.ok and report.uncovered == 0, report.first_problem
    assert actions(report, "keyholder")["keyholder.stopped"] == 1


def test_fused_only_server_holds_no_secret_key(world: FusedWorld) -> None:
    auditor = Agent.of(world.pki, "auditor-1", world.server.base_url)
    custody = auditor.http.get("/v1/status/keys").json()
    served = auditor.http.get("/v1/context").content
    with httpx.Client(verify=auditor.party.client_context()) as http:
        published = http.get(world.keyholder.url("/v1/context")).content
    assert custody["privacy_mode"] == "fused-only" and custody["holds_secret_key"] is False
    assert ts.context_from(served).is_private() is False
    assert served == published and custody["context_sha256"] == load_public_context(published).sha256
    assert not Path(str(server_data(world.server_config)["ckks_secret_context"])).exists()


def test_only_the_server_identity_may_decrypt_and_each_decryption_is_counted_and_audited(world: FusedWorld) -> None:
    mallory = Agent.of(world.pki, "mallory", world.keyholder.base_url)
    context = load_public_context(mallory.http.get("/v1/context").content)
    sealed = context.encrypt([0.123456, -2.5, 7.0])
    refused = mallory.http.post("/v1/decrypt-fused", json={"round_id": "r1", "sealed": sealed.to_dict()})
    assert (refused.status_code, refused.json()["code"]) == (403, "not_server")

    server_tls = world.pki.server.client_context()  # the server's own certificate (it carries clientAuth)
    with KeyHolderClient(world.keyholder.base_url, server_tls) as client:
        first = client.decrypt_fused(sealed, round_id="r1")
        second = client.decrypt_fused(sealed, round_id="r2")
    assert first.values == pytest.approx([0.1235, -2.5, 7.0], abs=1e-9)  # rounded to the release precision
    assert (first.decryptions, second.decryptions) == (1, 2)
    assert mallory.http.get("/v1/keyholder/status").json()["decryptions"] == 2

    report = audit_report(world.keyholder_config, "keyholder", live=True)  # the key holder is still running
    assert report.ok, report.first_problem
    assert actions(report, world.pki.server.identity)["decrypt.fused"] == 2
    assert actions(report, mallory.identity)["reject.not_server"] == 1
    assert second.audit_index > first.audit_index
