"""CSR-issued certificates over real mutual TLS, rotation without a server restart, CRL refresh in a live context.

The server (in-process, the same wiring as ``mor server serve``) and the agent's own transport
(:class:`client_agent.transport.ServerChannel`, pinned, with its :class:`crypto.tls_reload.TlsReloader`)
both use certificates made by ``keygen`` → ``sign-csr`` → ``install-cert``: the CA never saw a private key.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import socket
import ssl
import threading
from pathlib import Path

import httpx
import pytest
from helpers.consortium import write_policy

from client_agent.transport import RetryPolicy, ServerChannel, ServerPin
from crypto.csr import generate_key_and_csr, install_certificate, sign_csr
from crypto.pki import CertificateAuthority, init_ca
from crypto.tls import client_ssl_context, server_ssl_context
from crypto.tls_reload import TlsReloader
from sim.harness import InProcessServer, free_port, server_config


def _enrol(ca: CertificateAuthority, site: Path, role: str, name: str, *, renew: bool = False,
           dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> int:
    """What the site and the CA operator type: keygen, sign-csr, install-cert. Returns the new serial."""
    request = generate_key_and_csr(site, ca.consortium, role, name, dns=dns, ips=ips)
    signed = sign_csr(ca, request.csr_path.read_bytes(), role, renew=renew)
    installed = install_certificate(site, signed.cert_pem, ca_pem=ca.ca_cert_path.read_bytes())
    return installed.serial


def _old_pair_client(site: Path, copy: Path, ca: CertificateAuthority) -> httpx.Client:
    copy.mkdir()
    for name in ("cert.pem", "key.pem"):
        shutil.copy2(site / name, copy / name)
    context = client_ssl_context(copy / "cert.pem", copy / "key.pem", ca.ca_cert_path, ca.crl_path)
    return httpx.Client(verify=context, trust_env=False)


@pytest.mark.filterwarnings("ignore::policies.errors.InsecurePolicyWarning")  # a tls-only pilot: no CKKS to set up
def test_csr_issued_agent_talks_to_csr_issued_server_and_rotates_without_restart(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", "testnet")
    server_tls, agent_tls = tmp_path / "server-tls", tmp_path / "agent-tls"
    _enrol(ca, server_tls, "server", "aggregator", dns=("localhost",), ips=("127.0.0.1",))
    first = _enrol(ca, agent_tls, "client", "alice")
    config = server_config(tmp_path / "server.toml", data=tmp_path / "server-data", port=free_port(),
                           policy=write_policy(tmp_path / "policy.toml", mode="tls-only"),
                           tls={"cert": str(server_tls / "cert.pem"), "key": str(server_tls / "key.pem"),
                                "ca": str(server_tls / "ca.pem"), "crl": str(ca.crl_path)})
    with InProcessServer(config) as server:
        context = client_ssl_context(agent_tls / "cert.pem", agent_tls / "key.pem", agent_tls / "ca.pem", ca.crl_path)
        channel = ServerChannel(server.url, context, ServerPin("mor://testnet/server/aggregator"),
                                retry=RetryPolicy(max_attempts=1),
                                reloader=TlsReloader(context, cert=agent_tls / "cert.pem", key=agent_tls / "key.pem",
                                                     crl=ca.crl_path))
        status = channel.request("GET", "/v1/status").json()
        assert status["consortium"] == "testnet" and status["crl_next_update"] is not None
        assert status["crl_warning"] is None

        # renewal: a new key at the site, an overlapping certificate from the CA
        old = _old_pair_client(agent_tls, tmp_path / "old-pair", ca)
        request = generate_key_and_csr(agent_tls, "testnet", "client", "alice")
        renewed = sign_csr(ca, request.csr_path.read_bytes(), "client", renew=True)
        new_pair = tmp_path / "new-pair"
        new_pair.mkdir()
        (new_pair / "cert.pem").write_bytes(renewed.cert_pem)
        shutil.copy2(agent_tls / "next-key.pem", new_pair / "key.pem")
        new = httpx.Client(verify=client_ssl_context(new_pair / "cert.pem", new_pair / "key.pem", ca.ca_cert_path,
                                                     ca.crl_path), trust_env=False)
        for client in (old, new):  # overlap: the server accepts both, CA-signed and unrevoked
            assert client.get(f"{server.url}/v1/status").status_code == 200

        # the site installs the renewal; the running agent's next request presents it
        assert install_certificate(agent_tls, renewed.cert_pem).replaced_serial == first
        assert channel.request("GET", "/v1/status").status_code == 200
        ca.revoke("alice", serial=first)  # the server re-reads the CRL file on the next request
        assert channel.request("GET", "/v1/status").status_code == 200  # the agent already left the old cert
        try:  # a client that kept its pooled connection on the old certificate is now refused
            reply = old.get(f"{server.url}/v1/status")
        except httpx.TransportError:
            pass  # the server's watcher had already loaded the new CRL into its TLS context
        else:
            assert reply.status_code == 403 and reply.json()["code"] == "certificate_revoked"
        old.close()
        new.close()
        channel.close()


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """One TLS handshake on loopback: 'ok' or the server's error."""
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, str] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
                outcome["server"] = "ok"
        except (ssl.SSLError, OSError) as exc:
            outcome["server"] = str(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        raw = socket.create_connection(listener.getsockname())
        with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"x")
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    thread.join(10)
    listener.close()
    return outcome.get("server", "no handshake")


def test_an_expired_crl_in_a_live_context_is_replaced_without_restart(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    ca = init_ca(tmp_path / "ca", "testnet", now=past - dt.timedelta(days=1))
    server = ca.issue("aggregator", "server", dns=["localhost"], now=past)
    alice = ca.issue("alice", "client", now=past)
    context = server_ssl_context(server.cert_path, server.key_path, server.ca_path, ca.crl_path)  # expired CRL
    reloader = TlsReloader(context, cert=server.cert_path, key=server.key_path, crl=ca.crl_path, label="server")
    client = client_ssl_context(alice.cert_path, alice.key_path, alice.ca_path)
    assert "CRL has expired" in _handshake(context, client)
    ca.refresh_crl(days=3)  # fresh, but within 7 days of its next update
    with caplog.at_level(logging.WARNING, logger="crypto.tls_reload"):
        assert reloader.refresh() is False  # no new certificate, a new CRL
    assert _handshake(context, client) == "ok"
    assert any("expires at" in r.getMessage() for r in caplog.records)
