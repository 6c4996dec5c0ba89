"""Policy files: the shipped ones load; broken ones fail with file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mor_cli.main import main
from policies import (
    BUILTIN_POLICIES,
    InsecurePolicyWarning,
    PolicySyntaxError,
    PolicyValidationError,
    builtin_policy_path,
    load_policy,
    parse_policy,
)

GOOD = """
consortium = "c1"
[admission]
allow_all_certified = true
[privacy]
mode = "ckks"
max_epsilon = 3.0
max_delta = 1e-6
[rounds]
quorum = 2
deadline_s = 30
group_size = 4
prompts_per_round = 2
[audit]
retention_days = 30
"""


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_shipped_policies_load_from_the_installed_package(name: str) -> None:
    policy = load_policy(builtin_policy_path(name))
    assert policy.digest().startswith("sha256:")
    assert policy.ckks.poly_modulus_degree == 8192


def test_healthcare_policy_is_strict() -> None:
    policy = load_policy(builtin_policy_path("healthcare"))
    assert policy.privacy.mode in ("fused-only", "ckks")
    assert policy.privacy.max_epsilon <= 3 and policy.privacy.max_delta <= 1e-6
    assert policy.rounds.quorum >= 3
    assert policy.audit.retention_days >= 6 * 365
    assert not policy.pilot and policy.insecure_reasons() == []


def test_finance_policy_limits() -> None:
    policy = load_policy(builtin_policy_path("finance"))
    assert policy.privacy.mode == "ckks" and policy.privacy.max_epsilon <= 8
    assert policy.audit.retention_days >= 365


def test_pilot_policy_warns_loudly_and_lists_reasons() -> None:
    with pytest.warns(InsecurePolicyWarning, match="tls-only"):
        policy = load_policy(builtin_policy_path("pilot"))
    assert policy.privacy.mode == "tls-only"
    assert any("in the clear" in reason for reason in policy.insecure_reasons())


def test_digest_is_stable_and_changes_with_content() -> None:
    a = parse_policy(GOOD, "a.toml")
    b = parse_policy(GOOD, "b.toml")
    c = parse_policy(GOOD.replace("max_epsilon = 3.0", "max_epsilon = 2.0"), "c.toml")
    assert a.digest() == b.digest() != c.digest()


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (("max_epsilon = 3.0", "max_epsilon = -1"), "privacy.max_epsilon", "greater than 0"),
        (("max_epsilon = 3.0", 'max_epsilon = "lots"'), "privacy.max_epsilon", "valid number"),
        (("quorum = 2", "quorum = 0"), "rounds.quorum", "greater than or equal to 1"),
        (("quorum = 2", "quorum = 2\nquorom = 3"), "rounds.quorom", "unknown key"),
        (('mode = "ckks"', 'mode = "tls-only"'), "(top level)", "set pilot = true"),
        (('mode = "ckks"', 'mode = "rot13"'), "privacy.mode", "'tls-only', 'ckks' or 'fused-only'"),
        (("max_delta = 1e-6", "max_delta = 0.01"), "privacy.max_delta", "less than 0.001"),
        (("allow_all_certified = true", 'allowed_identities = ["https://evil"]'), "admission.allowed_identities",
         "not a mor://"),
        (("allow_all_certified = true", "allow_all_certified = false"), "admission", "nobody would be admitted"),
        (("retention_days = 30", "retention_days = 30\n[scores]\nmin = 5\nmax = 1"), "scores", "min must be < max"),
        (("retention_days = 30", "retention_days = 30\n[ckks]\ncoeff_mod_bit_sizes = [60, 60, 60, 60]"), "ckks",
         "exceeds the HE standard"),
        (("[rounds]\nquorum = 2\ndeadline_s = 30\n", "[rounds]\nquorum = 2\n"), "rounds.deadline_s", "missing"),
    ],
)
def test_broken_policy_names_file_key_and_reason(change: tuple[str, str], key: str, reason: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(text, "broken.toml")
    message = str(caught.value)
    assert f"broken.toml: {key}: " in message
    assert reason in message


def test_toml_syntax_error_names_line_and_column() -> None:
    with pytest.raises(PolicySyntaxError, match=r"bad\.toml: invalid TOML: .*line 3, column"):
        parse_policy('consortium = "x"\n[privacy]\nmax_epsilon = = 3\n', "bad.toml")


def test_cli_check_prints_effective_policy_and_fails_precisely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "check", str(builtin_policy_path("finance"))]) == 0
    out = capsys.readouterr().out
    assert "OK  sha256:" in out and 'privacy.mode = "ckks"' in out
    broken = tmp_path / "broken.toml"
    broken.write_text(GOOD.replace("quorum = 2", "quorum = -4"))
    assert main(["policy", "check", str(broken)]) == 2
    assert f"{broken}: rounds.quorum: Input should be greater than or equal to 1 (got -4)" in capsys.readouterr().err
    assert main(["policy", "check", str(tmp_path / "missing.toml")]) == 2
    assert "policy file not found" in capsys.readouterr().err


def test_cli_entry_point_runs_as_installed_script() -> None:
    mor = Path(sys.executable).with_name("mor")
    result = subprocess.run([str(mor), "policy", "check", "--json", str(builtin_policy_path("pilot"))],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert '"mode": "tls-only"' in result.stdout and "WARNING: " in result.stdout
