"""The status page opened the way a person opens it: headless Chromium holding a PKCS#12 certificate.

Prepare: a CA, an auditor certificate exported with ``mor ca export-p12`` and imported into
the browser's NSS database with ``pk12util`` (the consortium CA trusted for servers), an
``AutoSelectCertificateForUrls`` policy so the headless browser presents it, and a real
``mor server serve`` over mutual TLS under a *pilot* policy whose audit log already records a
GRPO run (two steps of three). Execute: ``chromium --dump-dom`` and ``--screenshot`` of
``/status``. Assert: the page rendered with the red INSECURE/pilot banner, the as-of time, the
viewer's and the server's certificate expiry, the CRL's next update and the GRPO step, reward
and KL; a browser
without a certificate gets no page.

Skips (with the reason printed) only when ``/usr/bin/chromium`` or ``pk12util`` is missing, or
the test cannot write Chromium's managed-policy folder (not root); CI installs both and runs as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.browser import chromium, missing_browser_tools
from helpers.consortium import write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_server, write_server_config

from audit import AuditLog
from crypto.signing import SigningKey
from mor_cli.main import main as mor

pytestmark = pytest.mark.timeout(180)
POLICY_DIR = Path("/etc/chromium/policies/managed")
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def tools() -> None:
    reason = missing_browser_tools()
    if reason is None and os.geteuid() != 0:
        reason = f"writing a managed policy under {POLICY_DIR} needs root"
    if reason is not None:
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)


def _nss_home(home: Path, ca_cert: Path, p12: Path | None, password_file: Path) -> Path:
    """A HOME whose ``.pki/nssdb`` trusts the consortium CA and (optionally) holds the person's certificate."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    empty = home / "empty-password"
    empty.write_text("")
    run = {"check": True, "capture_output": True, "stdin": subprocess.DEVNULL, "timeout": 60}
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "-f", str(empty)], **run)  # type: ignore[call-overload]
    subprocess.run(["certutil", "-A", "-d", f"sql:{db}", "-n", "consortium CA", "-t", "C,,", "-i", str(ca_cert),
                    "-f", str(empty)], **run)  # type: ignore[call-overload]
    if p12 is not None:
        subprocess.run(["pk12util", "-i", str(p12), "-d", f"sql:{db}", "-w", str(password_file), "-k", str(empty)],
                       **run)  # type: ignore[call-overload]
    return home


def _record_training(data: Path, consortium: str) -> None:
    """The server's own log, as a previous ``mor server run`` left it: a GRPO run at step 2 of 3."""
    key = SigningKey.load_or_create(data / "server-signing.pem")
    with AuditLog.open(data / "audit", signing_key=key, origin=f"mor://{consortium}/server") as log:
        log.append(actor="server", action="training.started", details={"config": {"max_steps": 3, "beta": 0.04}})
        for step, reward, kl in ((1, -0.087, 0.0), (2, 0.3125, 0.0123)):
            log.append(actor="server", action="grpo.step", details={
                "step": step, "reward": reward, "reward_std": 1.5, "kl": kl, "agents_answered": 3.0,
                "round_skipped": 0.0})


@pytest.fixture(scope="module")
def site(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("browser")
    pki = make_pki(tmp)
    auditor = pki.issue("audrey", "auditor")
    password_file = tmp / "p12-password"
    password_file.write_text(PASSWORD + "\n")
    p12 = tmp / "audrey.p12"
    assert mor(["ca", "export-p12", "--cert", str(auditor.cert), "--key", str(auditor.key), "--ca",
                str(pki.ca_cert), "--out", str(p12), "--password-file", str(password_file)]) == 0
    assert p12.stat().st_mode & 0o777 == 0o600
    port = free_port()
    config = write_server_config(tmp, pki, policy=write_policy(tmp / "policy.toml", mode="tls-only"), port=port)
    _record_training(tmp / "server-data", pki.consortium)
    policy = POLICY_DIR / f"mor-test-{uuid.uuid4().hex}.json"
    POLICY_DIR.mkdir(parents=True, exist_ok=True)
    policy.write_text(json.dumps({"AutoSelectCertificateForUrls": [
        json.dumps({"pattern": f"https://127.0.0.1:{port}", "filter": {}})]}))
    try:
        with start_server(config) as server:
            yield {"url": f"https://127.0.0.1:{port}/status", "tmp": tmp, "server": server, "auditor": auditor,
                   "with_cert": _nss_home(tmp / "home-audrey", pki.ca_cert, p12, password_file),
                   "without_cert": _nss_home(tmp / "home-nobody", pki.ca_cert, None, password_file)}
    finally:
        policy.unlink(missing_ok=True)


def test_a_person_with_the_exported_certificate_sees_the_page(site: dict[str, object]) -> None:
    home, url = site["with_cert"], str(site["url"])
    assert isinstance(home, Path)
    dom = chromium(home, "--dump-dom", url)
    assert "<h1>MoR-Secure aggregation server</h1>" in dom, dom[:2000]
    banner = dom[dom.index('id="insecure"'):]
    assert "INSECURE" in banner and "pilot = true" in banner and "tls-only" in banner
    assert ".insecure{" in dom and "color:#a00" in dom  # the banner's style: red on pink
    assert 'id="as-of"' in dom and "As of 20" in dom and "UTC" in dom
    mine = dom[dom.index('id="your-certificate"'):]
    assert "mor://testnet/auditor/audrey" in mine[:400] and "your certificate expires 20" in mine
    assert "CRL next update" in dom
    server_cert = dom[dom.index("server certificate expires"):][:400]
    assert "mor://testnet/server/server" in server_cert and "20" in server_cert
    training = dom[dom.index("<h2>Training (GRPO)</h2>"):]
    assert "2 of 3" in training and "0.3125" in training and "0.0123" in training
    assert "interrupted" in training  # the server was started again after the run it shows

    shot = Path(str(site["tmp"])) / "status.png"
    chromium(home, f"--screenshot={shot}", "--window-size=1200,1600", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)  # a page, not a blank or error tile


def test_a_browser_without_a_certificate_gets_no_page(site: dict[str, object]) -> None:
    home = site["without_cert"]
    assert isinstance(home, Path)
    dom = chromium(home, "--dump-dom", str(site["url"]))
    assert "MoR-Secure aggregation server" not in dom and "audrey" not in dom
    assert "ERR_" in dom, dom[:2000]  # Chromium's own error page (the TLS handshake was refused)

