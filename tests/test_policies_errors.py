"""Broken policy files fail with the file, the dotted key and the reason, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import PolicySyntaxError, PolicyValidationError, load_policy, parse_policy

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
LISTED = 'allowed_identities = ["mor://c1/client/a", "mor://c1/client/b"]'


def _with(section: str, body: str) -> tuple[str, str]:
    """A change that appends a table (for sections the GOOD policy leaves at defaults)."""
    return "retention_days = 30", f"retention_days = 30\n[{section}]\n{body}"


CASES = {
    "epsilon <= 0": (("max_epsilon = 3.0", "max_epsilon = -1"), "privacy.max_epsilon: must be > 0 (got -1)"),
    "epsilon zero": (("max_epsilon = 3.0", "max_epsilon = 0.0"), "privacy.max_epsilon: must be > 0 (got 0)"),
    "wrong type": (("max_epsilon = 3.0", 'max_epsilon = "3"'), 'privacy.max_epsilon: must be a number (got "3")'),
    "bool as int": (("quorum = 2", "quorum = true"), "rounds.quorum: must be an integer (got true)"),
    "float as int": (("quorum = 2", "quorum = 2.5"), "rounds.quorum: must be an integer (got 2.5)"),
    "unknown key": (("quorum = 2", "quorum = 2\nquorom = 3"), "rounds.quorom: unknown key (did you mean 'quorum'?)"),
    "unknown table": (("[audit]", "[audits]\nx = 1\n[audit]"), "audits: unknown key (did you mean 'audit'?)"),
    "table as value": (('consortium = "c1"', 'consortium = "c1"\nlimits = 5'),
                       "limits: must be a table [ ... ] (got 5)"),
    "missing key": (("deadline_s = 30\n", ""), "rounds.deadline_s: required key is missing"),
    "missing table": (("[audit]\nretention_days = 30", ""), "audit: required table [audit] is missing"),
    "tls-only without pilot": (('mode = "ckks"', 'mode = "tls-only"'),
                               "privacy.mode: 'tls-only' sends every client's scores to the server in the clear"),
    "unknown mode": (('mode = "ckks"', 'mode = "rot13"'),
                     "privacy.mode: must be one of 'tls-only', 'ckks' or 'fused-only' (got \"rot13\")"),
    "delta too big": (("max_delta = 1e-6", "max_delta = 1e-3"), "privacy.max_delta: must be < 0.001 (got 0.001)"),
    "quorum 0": (("quorum = 2", "quorum = 0"), "rounds.quorum: must be >= 1 (got 0)"),
    "deadline 0": (("deadline_s = 30", "deadline_s = 0"), "rounds.deadline_s: must be > 0 (got 0)"),
    "group of one": (("group_size = 4", "group_size = 1"), "rounds.group_size: must be >= 2 (got 1)"),
    "bad identity URI": (("allow_all_certified = true", 'allowed_identities = ["mor://c1/client/a", "https://x"]'),
                         'admission.allowed_identities[1]: not a mor://<consortium>/<server|client|keyholder|auditor>'
                         '/<name> identity (got "https://x")'),
    "identity with a newline": (("allow_all_certified = true", 'allowed_identities = ["mor://c1/client/a\\n"]'),
                                'admission.allowed_identities[0]: not a mor://'),
    "identity of another consortium": (("allow_all_certified = true", 'allowed_identities = ["mor://c2/client/a"]'),
                                       "admission.allowed_identities[0]: mor://c2/client/a belongs to consortium "
                                       "'c2', not 'c1'"),
    "identity twice": (("allow_all_certified = true", LISTED.replace("client/b", "client/a")),
                       "admission.allowed_identities[1]: mor://c1/client/a is listed twice"),
    "both admission switches": (("allow_all_certified = true", f"allow_all_certified = true\n{LISTED}"),
                                "admission.allow_all_certified: cannot be true while allowed_identities is listed"),
    "nobody admitted": (("allow_all_certified = true", "allow_all_certified = false"),
                        "admission.allowed_identities: list at least one identity or set allow_all_certified = true"),
    "quorum unreachable": (("allow_all_certified = true", LISTED.replace(', "mor://c1/client/b"', "")),
                           "rounds.quorum: 2 exceeds the 1 client identities in admission.allowed_identities"),
    "bad consortium name": (('consortium = "c1"', 'consortium = "c 1"'),
                            'consortium: use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit (got "c 1")'),
    "score range lo >= hi": (_with("scores", "min = 5\nmax = 5"),
                             "scores.max: must be greater than scores.min (got min = 5.0, max = 5.0)"),
    "infinite score bound": (_with("scores", "max = inf"), "scores.max: must be a finite number (got inf)"),
    "unknown out_of_range": (_with("scores", 'out_of_range = "ignore"'),
                             "scores.out_of_range: must be one of 'clip' or 'refuse' (got \"ignore\")"),
    "round does not fit a vector": (("prompts_per_round = 2", "prompts_per_round = 2000"),
                                    "rounds.prompts_per_round: a round needs group_size x prompts_per_round = 8000"),
    "vector does not fit a ciphertext": (_with("scores", "max_vector_length = 8192"),
                                         "scores.max_vector_length: 8192 does not fit one ciphertext"),
    "CKKS modulus over HE standard": (_with("ckks", "coeff_mod_bit_sizes = [60, 60, 60, 60]"),
                                      "ckks.coeff_mod_bit_sizes: total 240 bits exceeds the HE standard's 128-bit "
                                      "security limit of 218 bits for poly_modulus_degree = 8192"),
    "CKKS small N, default primes": (_with("ckks", "poly_modulus_degree = 4096"),
                                     "ckks.coeff_mod_bit_sizes: total 200 bits exceeds the HE standard's 128-bit "
                                     "security limit of 109 bits for poly_modulus_degree = 4096"),
    "CKKS N not a power of two": (_with("ckks", "poly_modulus_degree = 5000"),
                                  "ckks.poly_modulus_degree: must be one of 2048, 4096, 8192, 16384 or 32768 "
                                  "(got 5000)"),
    "CKKS prime too big": (_with("ckks", "coeff_mod_bit_sizes = [61, 40, 60]"),
                           "ckks.coeff_mod_bit_sizes[0]: must be <= 60 (got 61)"),
    "CKKS scale over middle prime": (_with("ckks", "coeff_mod_bit_sizes = [60, 30, 60]\nscale_bits = 40"),
                                     "ckks.scale_bits: 40 is larger than a middle prime"),
    "CKKS no integer bits": (_with("ckks", "coeff_mod_bit_sizes = [40, 40, 40]\nscale_bits = 40"),
                             "ckks.scale_bits: leaves 0 integer bits in the first prime"),
    "release finer than noise": (_with("ckks", "release_precision = 1e-9"),
                                 "ckks.release_precision: must be >= 9.54e-07"),
    "misspelt table": (_with("audit_", ""), "audit_: unknown key (did you mean 'audit'?)"),
    "empty log path": (("retention_days = 30", 'retention_days = 30\nlog_dir = ""'),
                       'audit.log_dir: must name a file or folder (got "")'),
    "log path wrong type": (("retention_days = 30", "retention_days = 30\nlog_dir = 7"),
                            "audit.log_dir: must be a path in quotes (got 7)"),
    "retention zero": (("retention_days = 30", "retention_days = 0"), "audit.retention_days: must be >= 1 (got 0)"),
    "tiny body limit": (_with("limits", "max_body_bytes = 10"), "limits.max_body_bytes: must be >= 1024 (got 10)"),
}


@pytest.mark.parametrize(("change", "expected"), CASES.values(), ids=CASES.keys())
def test_broken_policy_names_file_key_and_reason(change: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(text, "policies/x.toml")
    assert f"policies/x.toml: {expected}" in str(caught.value)
    assert all(line.startswith("policies/x.toml: ") for line in str(caught.value).splitlines())


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace("quorum = 2", "quorum = 0").replace("max_epsilon = 3.0", "max_epsilon = -1")
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(text, "x.toml")
    assert caught.value.problems == ["privacy.max_epsilon: must be > 0 (got -1)", "rounds.quorum: must be >= 1 (got 0)"]
    assert caught.value.source == "x.toml"


def test_pilot_permits_tls_only() -> None:
    with pytest.warns(UserWarning, match="tls-only"):
        policy = parse_policy("pilot = true\n" + GOOD.replace('mode = "ckks"', 'mode = "tls-only"'))
    assert policy.privacy.mode == "tls-only"


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ('consortium = "x"\n[privacy]\nmax_epsilon = = 3\n', 3, 15, "Invalid value"),
        ('consortium = "x"\n[privacy\n', 2, 9, "Expected ']' at the end of a table declaration"),
        ('consortium = "x"\nconsortium = "y"\n', 2, 17, "Cannot overwrite a value"),
        ('consortium = "x', None, None, "Unterminated string"),
    ],
)
def test_toml_syntax_error_names_file_line_and_column(
    tmp_path: Path, text: str, line: int | None, column: int | None, reason: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PolicySyntaxError) as caught:
        load_policy(path)
    assert (caught.value.line, caught.value.column, caught.value.reason) == (line, column, reason)
    where = f"line {line}, column {column}" if line else "end of file"
    assert str(caught.value) == f"{path}: {where}: invalid TOML: {reason}"
