"""agent.toml: valid files load with paths resolved; every mistake is one precise error (file, key, reason)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers.consortium import write_policy
from helpers.procs import write_toml

from client_agent.config import AgentConfig, load_agent_config, render_template
from client_agent.errors import AgentConfigError
from mor_cli.main import main


def _tables(tmp: Path, policy: Path) -> dict[str, dict[str, Any]]:
    return {
        "agent": {"server_url": "https://127.0.0.1:8443", "server_identity": "mor://testnet/server/server",
                  "policy": str(policy), "data_dir": "data", "state_dir": "state"},
        "tls": {"cert": "pki/cert.pem", "key": "pki/key.pem", "ca": "pki/ca.pem", "crl": "pki/crl.pem"},
        "privacy": {"epsilon": 4.0, "delta": 1e-6},
    }


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path]:
    ckks = write_policy(tmp_path / "policy.toml", mode="ckks", pilot=False)
    pilot = write_policy(tmp_path / "pilot.toml", mode="ckks", pilot=True)
    return ckks, pilot


def _write(tmp: Path, tables: dict[str, dict[str, Any]], name: str = "agent.toml") -> Path:
    return write_toml(tmp / "conf" / name, tables)


def test_valid_config_loads_with_defaults_and_resolved_paths(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    config = load_agent_config(_write(tmp_path, _tables(tmp_path, setup[0])))
    assert config.agent.data_dir == (tmp_path / "conf" / "data").resolve()
    assert config.tls.crl == (tmp_path / "conf" / "pki" / "crl.pem").resolve()
    assert config.signing_key_path == config.agent.state_dir / "signing-key.pem"
    assert config.consortium == "testnet" and config.model.arch == "frozen-mlp"
    assert config.limits.max_items_per_task == 1024 and config.network.max_attempts == 0
    with pytest.raises(Exception, match="frozen"):
        config.agent.insecure_pilot = True  # type: ignore[misc]


MISTAKES: list[tuple[str, Any, str]] = [
    ("unknown key", ("limits", "max_item", 3), r"\[limits\]\.max_item: unknown key"),
    ("missing epsilon", ("privacy", "epsilon", None), r"\[privacy\]\.epsilon: required key is missing"),
    ("plain http", ("agent", "server_url", "http://x:1"), r"\[agent\]\.server_url: must be an https:// URL"),
    ("client identity pinned", ("agent", "server_identity", "mor://testnet/client/a"),
     r"\[agent\]\.server_identity: .* is not a server identity"),
    ("bad fingerprint", ("agent", "server_cert_sha256", "abc"), r"\[agent\]\.server_cert_sha256: must be 64 hex"),
    ("epsilon above policy", ("privacy", "epsilon", 9.5), r"\[privacy\]\.epsilon: 9.5 exceeds .*max_epsilon 8.0"),
    ("delta above policy", ("privacy", "delta", 1e-4), r"\[privacy\]\.delta: 0.0001 exceeds .*max_delta 1e-05"),
    ("pilot under real policy", ("agent", "insecure_pilot", True), r"\[agent\]\.insecure_pilot: only allowed under"),
    ("seed without pilot", ("training", "seed", 3), r"\[training\]\.seed: a fixed seed makes DP noise predictable"),
    ("unknown arch", ("model", "arch", "gpt"), r"\[model\]\.arch: unknown architecture 'gpt'; known: frozen-mlp"),
    ("other consortium", ("agent", "server_identity", "mor://othernet/server/s"),
     r"\[agent\]\.server_identity: server is in consortium 'othernet' but the policy is for 'testnet'"),
    ("poll outlasts read timeout", ("network", "poll_wait_s", 90.0), r"\[network\]\.read_timeout_s: 60.0 must exceed"),
    ("negative cap", ("limits", "max_items_per_day", 0), r"\[limits\]\.max_items_per_day: .*greater than or equal"),
]


@pytest.mark.parametrize(("change", "pattern"), [(m[1], m[2]) for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_file_key_and_reason(tmp_path: Path, setup: tuple[Path, Path], change: Any,
                                                pattern: str) -> None:
    tables = _tables(tmp_path, setup[0])
    table, key, value = change
    if value is None:
        tables[table].pop(key)
    else:
        tables.setdefault(table, {})[key] = value
    path = _write(tmp_path, tables)
    with pytest.raises(AgentConfigError, match=pattern) as info:
        load_agent_config(path)
    assert str(info.value).startswith(str(path))


def test_model_params_are_checked_against_the_architecture(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    path = _write(tmp_path, _tables(tmp_path, setup[0]))
    path.write_text(path.read_text() + "\n[model]\narch = \"frozen-mlp\"\nparams = { hidden = 8, depth = 3 }\n")
    with pytest.raises(AgentConfigError, match=r"\[model\]\.params\.depth: not a parameter of frozen-mlp"):
        load_agent_config(path)


def test_unreadable_files_and_bad_toml(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    with pytest.raises(AgentConfigError, match="no such config file"):
        load_agent_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\nserver_url = 1")
    with pytest.raises(AgentConfigError, match=r"bad.toml: not valid TOML"):
        load_agent_config(bad)
    tables = _tables(tmp_path, setup[0])
    tables["agent"]["policy"] = str(tmp_path / "nope.toml")
    with pytest.raises(AgentConfigError, match=r"\[agent\]\.policy: .*nope.toml: policy file not found"):
        load_agent_config(_write(tmp_path, tables))


def test_insecure_pilot_under_pilot_policy_warns_loudly(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    tables = _tables(tmp_path, setup[1])
    tables["agent"]["insecure_pilot"] = True
    with pytest.warns(UserWarning, match="INSECURE PILOT AGENT"):
        assert load_agent_config(_write(tmp_path, tables)).agent.insecure_pilot


def test_template_covers_every_key_once(tmp_path: Path) -> None:
    text = render_template()
    for table, field in AgentConfig.model_fields.items():
        if table == "source":
            continue
        assert f"[{table}]" in text
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            assert f"{key} =" in text
    tomllib.loads(text)


def test_init_config_cli(tmp_path: Path, setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "agent.toml"
    args = ["client", "init-config", "--out", str(out), "--server-url", "https://127.0.0.1:9", "--server-identity",
            "mor://testnet/server/server", "--policy", str(setup[0]), "--cert", "c.pem", "--key", "k.pem",
            "--ca", "ca.pem", "--crl", "crl.pem", "--epsilon", "3", "--delta", "1e-6"]
    assert main(args) == 0
    assert load_agent_config(out).privacy.epsilon == 3.0
    assert main(args) == 2
    assert "exists (use --force to overwrite)" in capsys.readouterr().err
    too_much = [*args, "--force"]
    too_much[too_much.index("3")] = "50"
    assert main(too_much) == 2
    assert "[privacy].epsilon: 50.0 exceeds" in capsys.readouterr().err
    partial = tmp_path / "partial.toml"
    assert main(["client", "init-config", "--out", str(partial)]) == 0
    assert "fill in the required keys: [agent].server_url" in capsys.readouterr().out


def test_init_config_sets_model_params(tmp_path: Path, setup: tuple[Path, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A member with an HF reward model sets its path (and typed knobs) without editing the file."""
    out = tmp_path / "agent.toml"
    args = ["client", "init-config", "--out", str(out), "--server-url", "https://127.0.0.1:9", "--server-identity",
            "mor://testnet/server/server", "--policy", str(setup[0]), "--cert", "c.pem", "--key", "k.pem",
            "--ca", "ca.pem", "--crl", "crl.pem", "--epsilon", "3", "--delta", "1e-6", "--arch", "frozen-mlp",
            "--model-param", "hidden=64"]
    assert main(args) == 0
    assert load_agent_config(out).model.params == {"hidden": 64}
    assert main([*args, "--force", "--model-param", "no equals sign"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main([*args, "--force", "--model-param", "hiden=32"]) == 2  # checked against the factory, before writing
    assert "params.hiden: not a parameter of frozen-mlp" in capsys.readouterr().err
    assert load_agent_config(out).model.params == {"hidden": 64}  # a refused config never overwrites a good one


def test_run_with_a_broken_config_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "run", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.toml: no such config file" in err and "Traceback" not in err
