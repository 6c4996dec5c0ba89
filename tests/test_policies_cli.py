"""``mor policy check`` / ``mor policy list``: exit codes, precise messages, re-loadable output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mor_cli.main import main
from policies import builtin_policy_path, load_policy


def test_check_prints_effective_policy_as_toml_that_loads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finance = builtin_policy_path("finance")
    assert main(["policy", "check", str(finance)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    digest = load_policy(finance).digest()
    assert f"# {finance}: OK\n# digest: {digest}\n" in out
    assert 'mode = "ckks"' in out and "# revocation_list is not set" in out
    saved = tmp_path / "effective.toml"
    saved.write_text(out)
    assert load_policy(saved).digest() == digest  # the printout is a complete, explicit policy


def test_check_reports_each_broken_file_precisely_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(builtin_policy_path("finance").read_text().replace("quorum = 2", "quorum = -4"))
    syntax = tmp_path / "syntax.toml"
    syntax.write_text('consortium = "x"\n[privacy\n')
    files = [str(builtin_policy_path("healthcare")), str(broken), str(syntax), str(tmp_path / "missing.toml")]
    assert main(["policy", "check", *files]) == 2
    out, err = capsys.readouterr()
    assert f"# {files[0]}: OK" in out and str(broken) not in out
    assert f"{broken}: rounds.quorum: must be >= 1 (got -4)\n" in err
    assert f"{syntax}: line 2, column 9: invalid TOML: Expected ']' at the end of a table declaration\n" in err
    assert f"{tmp_path / 'missing.toml'}: policy file not found\n" in err
    assert err.endswith("mor policy: error: 3 of 4 policy file(s) invalid (details above)\n")
    assert "Traceback" not in err


def test_json_output_and_loud_pilot_warning_from_the_installed_script() -> None:
    mor = Path(sys.executable).with_name("mor")
    pilot, healthcare = builtin_policy_path("pilot"), builtin_policy_path("healthcare")
    result = subprocess.run([str(mor), "policy", "check", "--json", str(pilot), str(healthcare)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)  # stdout is pure JSON; warnings go to stderr
    assert [r["file"] for r in reports] == [str(pilot), str(healthcare)]
    assert reports[0]["policy"]["privacy"]["mode"] == "tls-only"
    assert any("in the clear" in reason for reason in reports[0]["insecure"]) and reports[1]["insecure"] == []
    assert reports[1]["digest"] == load_policy(healthcare).digest()
    assert result.stderr.startswith(f"WARNING: INSECURE POLICY {pilot}: pilot = true")


def test_list_shows_the_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["healthcare", "finance", "pilot"]
    assert all(Path(line.split(maxsplit=1)[1]).is_file() for line in lines)
