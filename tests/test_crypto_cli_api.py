"""`mor ca` end to end (in process and as the installed console script), and the public API surface."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

import crypto
from mor_cli.main import main

EXPECTED_API = {
    "HE_STANDARD_MAX_MODULUS_BITS", "ROLES", "CKKSKeyOwner", "CKKSParameters", "CertificateAuthority",
    "CertificateRecord", "CryptoError", "Envelope", "IntegrityError", "IssuedCertificate", "KeyFileError",
    "MemoryNonceStore", "NonceStore", "OpenedEnvelope", "PKIError", "ParameterError", "PayloadKind",
    "PublicContext", "Role", "SealedVector", "SigningKey", "VerifyKey", "canonical_json", "client_ssl_context",
    "identity_of", "init_ca", "load_public_context", "make_identity", "open_envelope", "parse_identity",
    "peer_identity", "role_of", "seal_scores", "server_ssl_context", "sign_plain_scores", "weighted_sum",
    "write_private_file",
}


def test_public_api_is_exactly_all() -> None:
    assert set(crypto.__all__) == EXPECTED_API
    assert len(crypto.__all__) == len(EXPECTED_API)
    assert all(hasattr(crypto, name) for name in crypto.__all__)
    # TenSEAL and hazmat primitives stay behind the package
    assert not any(name.startswith(("ts", "tenseal", "ec", "x509")) for name in crypto.__all__)


def test_ca_cli_init_issue_revoke_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "ca")
    assert main(["ca", "init", "--dir", d, "--consortium", "acme"]) == 0
    assert main(["ca", "issue", "--dir", d, "--name", "agg", "--role", "server", "--dns", "localhost",
                 "--ip", "127.0.0.1", "--days", "30"]) == 0
    assert main(["ca", "issue", "--dir", d, "--name", "hosp", "--role", "client"]) == 0
    out = capsys.readouterr().out
    assert "mor://acme/server/agg" in out and "mor://acme/client/hosp" in out
    key = tmp_path / "ca" / "parties" / "hosp" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca" / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert main(["ca", "revoke", "--dir", d, "--name", "hosp"]) == 0
    assert main(["ca", "list", "--dir", d]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[[line.split()[0] for line in lines].index("NAME") + 1:]
    rows = {line.split()[0]: line.split()[2] for line in table}
    assert rows == {"agg": "valid", "hosp": "revoked"}
    assert main(["ca", "crl", "--dir", d, "--days", "7"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ca", "issue", "--name", "c", "--role", "client", "--dns", "x"], "only for server, keyholder"),
        (["ca", "issue", "--name", "agg", "--role", "server"], "already holds a valid certificate"),
        (["ca", "issue", "--name", "s2", "--role", "server", "--ip", "not-an-ip"], "--ip:"),
        (["ca", "revoke", "--name", "ghost"], "no certificate issued"),
        (["ca", "init", "--consortium", "acme"], "already exists"),
    ],
)
def test_ca_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           argv: list[str], message: str) -> None:
    d = str(tmp_path / "ca")
    main(["ca", "init", "--dir", d, "--consortium", "acme"])
    main(["ca", "issue", "--dir", d, "--name", "agg", "--role", "server"])
    capsys.readouterr()
    assert main([*argv, "--dir", d]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mor ca: error:") and message in err


def test_ca_cli_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "list", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "no CA here" in capsys.readouterr().err


def test_installed_mor_console_script(tmp_path: Path) -> None:
    mor = Path(sys.executable).parent / "mor"
    d = str(tmp_path / "ca")
    for argv in (["ca", "init", "--dir", d, "--consortium", "acme"],
                 ["ca", "issue", "--dir", d, "--name", "kh", "--role", "keyholder"]):
        subprocess.run([str(mor), *argv], check=True, capture_output=True, timeout=60)
    listed = subprocess.run([str(mor), "ca", "list", "--dir", d], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "kh" in listed.stdout and "keyholder" in listed.stdout
    again = subprocess.run([str(mor), "ca", "init", "--dir", d], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "Traceback" not in again.stderr and "refusing to overwrite" in again.stderr
