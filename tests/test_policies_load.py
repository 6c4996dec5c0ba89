"""The shipped policies load and say what the regulations require; digests pin the effective policy."""

from __future__ import annotations

import hashlib
import json
import tomllib
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policies
from policies import (
    BUILTIN_POLICIES,
    InsecurePolicyWarning,
    Policy,
    PolicyFileError,
    builtin_policy_path,
    load_policy,
    parse_policy,
    render_toml,
)

MINIMAL = """
consortium = "c1"
[admission]
allow_all_certified = true
[privacy]
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


def _load_quietly(name: str) -> Policy:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        return load_policy(builtin_policy_path(name))


def test_public_api_is_exactly_all() -> None:
    modules = {"errors", "fusion", "lifetime", "loader", "render", "schema", "section"}
    public = {name for name in vars(policies) if not name.startswith("_")} - modules
    assert public == set(policies.__all__)


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_shipped_policies_are_package_data_and_load(name: str) -> None:
    path = builtin_policy_path(name)
    assert path.parent == Path(policies.__file__).parent and path.is_file()
    package_data = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(path.match(pattern) for pattern in package_data["policies"])  # ships in the wheel
    policy = _load_quietly(name)
    assert policy.digest().startswith("sha256:")


def test_healthcare_policy_is_strict() -> None:
    policy = load_policy(builtin_policy_path("healthcare"))
    assert policy.privacy.mode == "fused-only"
    assert policy.privacy.max_epsilon <= 3 and policy.privacy.max_delta <= 1e-6
    assert policy.rounds.quorum >= 3 and not policy.admission.allow_all_certified
    assert policy.audit.retention_days == 6 * 365
    assert "45 CFR 164.316(b)(2)(i)" in builtin_policy_path("healthcare").read_text()
    assert not policy.pilot and policy.insecure_reasons() == []


def test_finance_policy_limits() -> None:
    policy = load_policy(builtin_policy_path("finance"))
    assert policy.privacy.mode == "ckks"
    assert policy.privacy.max_epsilon <= 8 and policy.privacy.max_delta <= 1e-5
    assert policy.audit.retention_days == 365
    assert "10.5.1" in builtin_policy_path("finance").read_text()
    assert policy.insecure_reasons() == []


def test_secure_policies_load_without_any_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("healthcare", "finance"):
            load_policy(builtin_policy_path(name))


def test_pilot_policy_warns_loudly_at_the_callers_line_and_lists_reasons() -> None:
    with pytest.warns(InsecurePolicyWarning, match=r"INSECURE POLICY .*pilot\.toml: .*tls-only") as caught:
        policy = load_policy(builtin_policy_path("pilot"))
    assert caught[0].filename == __file__  # points at the code that loaded it, not inside policies/
    assert policy.pilot and policy.privacy.mode == "tls-only" and policy.rounds.quorum == 2
    assert any("in the clear" in reason for reason in policy.insecure_reasons())


def test_pilot_switch_alone_is_still_reported() -> None:
    with pytest.warns(InsecurePolicyWarning, match="pilot = true"):
        policy = parse_policy("pilot = true\n" + MINIMAL)
    assert policy.privacy.mode == "ckks" and len(policy.insecure_reasons()) == 1


def test_defaults_are_secure() -> None:
    policy = parse_policy(MINIMAL)
    assert policy.privacy.mode == "ckks" and policy.privacy.accountant == "prv"
    assert policy.scores.out_of_range == "refuse" and policy.ckks.poly_modulus_degree == 8192


def test_policy_is_frozen() -> None:
    policy = parse_policy(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        policy.privacy.max_epsilon = 100.0  # type: ignore[misc]


def test_digest_is_sha256_of_canonical_effective_policy() -> None:
    policy = parse_policy(MINIMAL)
    expected = json.dumps(policy.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert policy.digest() == "sha256:" + hashlib.sha256(expected.encode()).hexdigest()
    assert policy.to_dict()["limits"] == {"max_body_bytes": 4_000_000, "requests_per_minute": 600}  # defaults in


def test_digest_ignores_layout_and_source_but_not_values() -> None:
    reordered = "\n".join(reversed(MINIMAL.strip().split("\n[")))  # same tables, other order, comments added
    reordered = "# a comment\n" + reordered.replace("quorum = 2", "quorum = 2  # two").replace("audit]", "[audit]")
    explicit = MINIMAL.replace("[privacy]", '[privacy]\nmode = "ckks"')  # a default written out
    digests = {parse_policy(text, source).digest() for text, source in
               [(MINIMAL, "a.toml"), (MINIMAL, "/elsewhere/b.toml"), (explicit, "c.toml")]}
    assert len(digests) == 1
    assert parse_policy(MINIMAL.replace("max_epsilon = 3.0", "max_epsilon = 2.9")).digest() not in digests


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_rendered_effective_policy_loads_back_to_the_same_digest(name: str) -> None:
    policy = _load_quietly(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        again = parse_policy(render_toml(policy), "rendered.toml")
    assert again == policy and again.digest() == policy.digest()


@settings(max_examples=40, deadline=None)
@given(
    epsilon=st.floats(min_value=1e-3, max_value=100, allow_nan=False),
    delta=st.floats(min_value=1e-12, max_value=9.99e-4),
    mode=st.sampled_from(["ckks", "fused-only"]),
    quorum=st.integers(1, 50),
    lo=st.floats(-1e4, 1e4),
    width=st.floats(1e-3, 1e4),
    log_dir=st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
)
def test_any_valid_policy_round_trips_through_its_rendering(
    epsilon: float, delta: float, mode: str, quorum: int, lo: float, width: float, log_dir: str
) -> None:
    base = parse_policy(MINIMAL)
    data = base.to_dict()
    data["privacy"] |= {"max_epsilon": epsilon, "max_delta": delta, "mode": mode}
    data["rounds"] |= {"quorum": quorum}
    data["scores"] |= {"min": lo, "max": lo + width}
    if log_dir.strip(".") == "":
        log_dir = "x" + log_dir
    data["audit"] |= {"log_dir": log_dir}
    policy = Policy.model_validate(data, strict=False)
    assert parse_policy(render_toml(policy)).digest() == policy.digest()


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match=r"missing\.toml: policy file not found"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(PolicyFileError, match="is a directory"):
        load_policy(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('consortium = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(PolicyFileError, match=r"latin1\.toml: not UTF-8 text \(byte 17\)"):
        load_policy(latin1)
    with pytest.raises(PolicyFileError, match="unknown built-in policy; choose one of healthcare"):
        builtin_policy_path("../etc/passwd")
