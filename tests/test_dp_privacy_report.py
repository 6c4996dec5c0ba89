"""The signed privacy report: built from a training result, signed, verified, tamper-evident, JSON round-trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_agent.dp import PrivateTrainingResult
from client_agent.privacy_report import PrivacyReport, PrivacyReportError, SignedPrivacyReport
from crypto.errors import IntegrityError
from crypto.signing import SigningKey

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def _result(epsilon: float = 7.98, steps: int = 60) -> PrivateTrainingResult:
    return PrivateTrainingResult(
        arch="frozen-mlp", epsilon=epsilon, epsilon_independent=epsilon, delta=1e-5, accountant="prv",
        noise_multiplier=1.76, sample_rate=1 / 3, steps=steps, epochs=20, dataset_size=600, expected_batch_size=200,
        max_grad_norm=1.0, clipping="ghost", secure_mode=False, insecure_pilot=True,
        history=((1.76, 1 / 3, steps),), epoch_losses=(0.69, 0.5), empty_batches=0, seconds=6.0,
        noise_source="INSECURE seeded torch PRNG (pilot only)",
    )


def _report(**kw) -> PrivacyReport:
    return PrivacyReport.from_training(_result(**kw), agent_id="hospital-a", model_digest="ab" * 32, now=NOW)


def test_report_carries_every_field_the_auditor_needs():
    report = _report()
    assert report.created_at == "2026-11-24T12:00:00+00:00"
    dumped = report.model_dump()
    for key in ("agent_id", "epsilon", "delta", "accountant", "noise_multiplier", "sample_rate", "steps", "epochs",
                "dataset_size", "max_grad_norm", "clipping", "secure_mode", "insecure_pilot", "noise_source",
                "model_arch",
                "model_digest", "created_at"):
        assert key in dumped
    assert dumped["insecure_pilot"] is True and dumped["model_arch"] == "frozen-mlp"
    with pytest.raises(Exception, match="frozen"):
        report.epsilon = 0.1  # type: ignore[misc]


def test_sign_verify_and_json_round_trip():
    key = SigningKey.generate()
    signed = _report().sign(key)
    again = SignedPrivacyReport.from_json(signed.to_json())
    assert again == signed
    assert again.verify(key.verify_key()) == _report()
    assert again.signer == key.verify_key().fingerprint()


def test_tampering_with_any_field_breaks_the_signature():
    key = SigningKey.generate()
    signed = _report().sign(key)
    for field, value in [("epsilon", 0.5), ("steps", 1), ("insecure_pilot", False), ("agent_id", "bank-b"),
                         ("model_digest", "cd" * 32), ("created_at", "2026-11-25T12:00:00+00:00")]:
        forged = SignedPrivacyReport(report=signed.report.model_copy(update={field: value}),
                                     signer=signed.signer, signature=signed.signature)
        with pytest.raises(IntegrityError):
            forged.verify(key.verify_key())


def test_wrong_key_or_garbled_signature_is_refused():
    key, other = SigningKey.generate(), SigningKey.generate()
    signed = _report().sign(key)
    with pytest.raises(IntegrityError):
        signed.verify(other.verify_key())
    garbled = signed.model_copy(update={"signature": "!!not base64!!"})
    with pytest.raises(IntegrityError):
        garbled.verify(key.verify_key())
    resigned_by_other = SignedPrivacyReport(report=signed.report, signer=signed.signer,
                                            signature=_report().sign(other).signature)
    with pytest.raises(IntegrityError):
        resigned_by_other.verify(key.verify_key())


def test_malformed_json_names_the_field():
    signed = _report().sign(SigningKey.generate())
    text = signed.to_json().replace('"steps":60', '"steps":"many"')
    with pytest.raises(PrivacyReportError, match=r"report.json: report.steps: "):
        SignedPrivacyReport.from_json(text, source="report.json")
    with pytest.raises(PrivacyReportError, match="report.json: "):
        SignedPrivacyReport.from_json("{", source="report.json")
    extra = signed.to_json().replace('"steps":60', '"steps":60,"note":"x"')
    with pytest.raises(PrivacyReportError, match="report.note"):
        SignedPrivacyReport.from_json(extra, source="report.json")


def test_created_at_is_utc_even_from_another_zone():
    report = PrivacyReport.from_training(_result(), agent_id="a", model_digest="ab" * 32,
                                         now=NOW.astimezone(timezone(timedelta(hours=5))))
    assert report.created_at == "2026-11-24T12:00:00+00:00"


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(min_value=1e-3, max_value=1e3, allow_nan=False), steps=st.integers(0, 10**6))
def test_round_trip_property(eps, steps):
    key = SigningKey.generate()
    signed = _report(epsilon=eps, steps=steps).sign(key)
    back = SignedPrivacyReport.from_json(signed.to_json())
    assert back.verify(key.verify_key()).epsilon == eps


def test_public_api_is_exactly_exported():
    import client_agent.dp as dp
    import client_agent.rewards as rewards

    assert set(dp.__all__) == {"InsecurePilotWarning", "ParameterGuard", "PrivacyBudget", "PrivateTrainingResult",
                               "check_budget", "check_epsilon", "recompute_epsilon", "train_private"}
    assert set(rewards.__all__) == {"ARCHITECTURES", "BradleyTerryLoss", "FrozenMLPReward", "LoraMiniLMReward",
                                    "RewardModel", "TinyVLTReward", "load_reward_model", "pair_accuracy"}
    for module in (dp, rewards):
        assert all(hasattr(module, name) for name in module.__all__)
