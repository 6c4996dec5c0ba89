"""The wiring, in process: policy -> service rules, the real audit log behind the service, start-up refusals.

The HTTP behaviour itself (every refusal, receipts, restarts) is tested against real server
processes in ``test_server_rejections.py``, ``test_server_restart.py`` and
``test_keyholder_process.py``; here are the pieces those processes are built from, where a
wrong mapping would be silent: a rate limit, an allow-list, a checkpoint a verifier cannot check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.consortium import write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, write_server_config

from audit import InvalidProofError, verify_inclusion, verify_log
from audit.wire_form import checkpoint_from_wire
from crypto.ckks import CKKSKeyOwner, CKKSParameters
from crypto.errors import IntegrityError
from crypto.signing import SigningKey
from mor_cli.main import main
from policies import builtin_policy_path
from server.audit_trail import AuditLogTrail
from server.config import load_server_config
from server.errors import ConfigError
from server.wiring import open_server, service_policy
from wire.messages import SignedCheckpoint, SignedInclusionProof


def test_builtin_policies_map_to_the_rules_the_service_enforces() -> None:
    health = service_policy(builtin_policy_path("healthcare"))
    assert health.privacy_mode == "fused-only" and health.digest.startswith("sha256:")
    assert health.allowed_identities == frozenset({f"mor://health-consortium/client/{n}"
                                                   for n in ("medical", "finance", "detail")})
    assert (health.requests_per_s, health.burst) == (10.0, 100)  # 600/min, 10 s of it at once
    assert (health.max_body_bytes, health.max_items, health.out_of_range) == (4_000_000, 4096, "refuse")
    assert health.insecure_reasons == ()
    with pytest.warns(UserWarning, match="(?i)insecure"):
        pilot = service_policy(builtin_policy_path("pilot"))
    assert pilot.allowed_identities is None and pilot.privacy_mode == "tls-only"
    assert any("tls-only" in reason for reason in pilot.insecure_reasons)


def test_audit_trail_serves_checkpoints_and_proofs_a_verifier_can_check(tmp_path: Path) -> None:
    key = SigningKey.generate()
    trail = AuditLogTrail.open(tmp_path / "audit", key, origin="mor://testnet/server", checkpoint_every=1000)
    records = [trail.record("mor://testnet/client/a", "submission.accepted",
                            {"round_id": f"r{i}", "task_id": f"t{i}", "n": i}) for i in range(5)]
    assert [r.index for r in records] == list(range(5)) and trail.size() == 5
    head = SignedCheckpoint.model_validate(trail.checkpoint())
    assert trail.checkpoint() == head.model_dump()  # nothing new: the same signed head, no new line
    proof = SignedInclusionProof.model_validate(trail.proof(3))
    checked = checkpoint_from_wire(proof.checkpoint.model_dump(), key.verify_key())
    assert proof.leaf_sha256 == records[3].leaf_sha256 and checked.size == 5
    verify_inclusion(proof.leaf_sha256, 3, checked.size, proof.path_sha256, checked.root)
    with pytest.raises(InvalidProofError):
        verify_inclusion(records[2].leaf_sha256, 3, checked.size, proof.path_sha256, checked.root)
    with pytest.raises(IntegrityError):
        checkpoint_from_wire({**head.model_dump(), "size": 4}, key.verify_key())
    with pytest.raises(IntegrityError):
        checkpoint_from_wire(head.model_dump(), SigningKey.generate().verify_key())
    trail.close()
    report = verify_log(tmp_path / "audit", key.verify_key())
    assert report.ok and report.entries == 5 and report.uncovered == 0
    assert (tmp_path / "audit" / "checkpoints.jsonl").read_text().count("\n") == 1


def _config(tmp_path: Path, **policy: object) -> Path:
    pki = make_pki(tmp_path / "pki")
    return write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml", **policy),  # type: ignore[arg-type]
                               port=free_port())


def test_start_up_refusals_are_precise_and_release_the_audit_log(tmp_path: Path) -> None:
    config = load_server_config(_config(tmp_path))
    first = open_server(config)
    with pytest.raises(ConfigError, match="audit log .*audit"):  # one writer per log directory
        open_server(config)
    first.close()
    open_server(config).close()  # released: a clean restart works

    small = CKKSParameters(poly_modulus_degree=16384, coeff_mod_bit_sizes=(60, 40, 40, 60))
    secret = config.server.ckks_secret_context
    assert secret is not None
    secret.unlink()
    CKKSKeyOwner.generate(small).save(secret)
    with pytest.raises(ConfigError, match="policy asks for"):
        open_server(config)
    secret.unlink()
    open_server(config).close()  # the failed start released the log too

    elsewhere = load_server_config(_config(tmp_path / "crl", admission={"allow_all_certified": True,
                                                                        "revocation_list": "stale-crl.pem"}))
    with pytest.raises(ConfigError, match="revocation_list .*stale-crl.pem.* is not the CRL the server checks"):
        open_server(elsewhere)


def test_cli_reports_bad_configs_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: no such config file" in capsys.readouterr().err
    config = _config(tmp_path)
    training = tmp_path / "training.toml"
    training.write_text("[training]\nmodel_path = 'm'\noutput_dir = 'o'\nmax_steps = 0\n")
    assert main(["server", "run", "--config", str(config), "--training", str(training)]) == 2
    err = capsys.readouterr().err.strip()
    assert "training.toml" in err and "max_steps" in err and len(err.splitlines()) == 1
    policy = tmp_path / "policy.toml"
    policy.write_text(policy.read_text().replace('mode = "ckks"', 'mode = "tls-only"'))
    assert main(["server", "serve", "--config", str(config)]) == 2
    assert "privacy.mode" in capsys.readouterr().err


def test_key_custody_counts_decryptions_from_the_log_across_restarts(tmp_path: Path) -> None:
    """``/v1/status/keys`` reads decryptions from the audit log, so a restart does not reset them to 0."""
    from server.fusion import ScoreRange
    from server.privacy_mode import privacy_mode_for

    key = SigningKey.generate()
    trail = AuditLogTrail.open(tmp_path / "audit", key, origin="mor://testnet/server")
    for chunks in (2, 3):
        trail.record("server", "decrypt.agent", {"round_id": "router-1", "agent": "a", "chunks": chunks})
    trail.record("server", "decrypt.fused", {"round_id": "score-1", "chunks": 7})  # not the server's own key
    trail.close()
    reopened = AuditLogTrail.open(tmp_path / "audit", key, origin="mor://testnet/server")
    try:
        assert reopened.logged_decryptions() == 5
        owner = CKKSKeyOwner.generate()
        mode = privacy_mode_for("ckks", scores=ScoreRange(-1, 1), audit=reopened, key_owner=owner,
                                decryptions_before=reopened.logged_decryptions())
        owner.decrypt(owner.public_context.encrypt([0.5]))
        assert mode.decryptions == 6  # five before the restart, one since
    finally:
        reopened.close()
