"""``mor ca export-p12``: a browser-importable PKCS#12 that only the password opens, and precise refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from helpers.pki import make_pki

from crypto.errors import KeyFileError, PKIError
from crypto.p12 import export_p12
from mor_cli.main import main as mor

PASSWORD = "long enough password"


def test_export_roundtrips_with_the_password_only(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    audrey = pki.issue("audrey", "auditor")
    out = tmp_path / "audrey.p12"
    exported = export_p12(cert=audrey.cert, key=audrey.key, ca=pki.ca_cert, out=out, password=PASSWORD)
    assert exported.identity == "mor://testnet/auditor/audrey" and out.stat().st_mode & 0o777 == 0o600
    key, cert, extra = pkcs12.load_key_and_certificates(out.read_bytes(), PASSWORD.encode())
    assert cert is not None and cert.serial_number == audrey.serial and key is not None
    assert len(extra) == 1 and extra[0].subject == cert.issuer  # the CA, so the chain is complete
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(out.read_bytes(), b"wrong password")


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    audrey, bob = pki.issue("audrey", "auditor"), pki.issue("bob")
    other = make_pki(tmp_path / "other")
    with pytest.raises(KeyFileError, match="at least 8 characters"):
        export_p12(cert=audrey.cert, key=audrey.key, out=tmp_path / "a.p12", password="short")
    with pytest.raises(PKIError, match="is not the certificate of the key"):
        export_p12(cert=audrey.cert, key=bob.key, out=tmp_path / "b.p12", password=PASSWORD)
    with pytest.raises(PKIError, match="not issued by the CA certificate"):
        export_p12(cert=audrey.cert, key=audrey.key, ca=other.ca_cert, out=tmp_path / "c.p12", password=PASSWORD)
    (tmp_path / "d.p12").write_bytes(b"keep me")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        export_p12(cert=audrey.cert, key=audrey.key, out=tmp_path / "d.p12", password=PASSWORD)
    assert (tmp_path / "d.p12").read_bytes() == b"keep me"
    assert not any((tmp_path / f"{n}.p12").exists() for n in "abc")


def test_cli_reads_the_password_from_env_never_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path)
    audrey = pki.issue("audrey", "auditor")
    args = ["ca", "export-p12", "--cert", str(audrey.cert), "--key", str(audrey.key), "--out", str(tmp_path / "a.p12")]
    assert mor([*args, "--password-env", "MOR_P12_PASSWORD"]) == 2
    assert "MOR_P12_PASSWORD: the variable is not set" in capsys.readouterr().err
    monkeypatch.setenv("MOR_P12_PASSWORD", PASSWORD)
    assert mor([*args, "--password-env", "MOR_P12_PASSWORD"]) == 0
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mor([*args, "--password", PASSWORD])  # there is no such option


def test_an_out_that_cannot_be_written_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path)
    audrey = pki.issue("audrey", "auditor")
    (tmp_path / "a-file").write_bytes(b"not a folder")
    monkeypatch.setenv("MOR_P12_PASSWORD", PASSWORD)
    out = tmp_path / "a-file" / "audrey.p12"  # its folder would have to replace a file
    assert mor(["ca", "export-p12", "--cert", str(audrey.cert), "--key", str(audrey.key), "--out", str(out),
                "--password-env", "MOR_P12_PASSWORD"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write the PKCS#12 file" in err and len(err.strip().splitlines()) == 1
