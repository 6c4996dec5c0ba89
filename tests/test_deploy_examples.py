"""The example configs in deploy/examples load with the real loaders (operators copy them)."""

from __future__ import annotations

from pathlib import Path

from server.config import load_server_config
from server.keyholder.config import load_keyholder_config
from server.trainer import load_training_config

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"


def test_server_example_loads() -> None:
    config = load_server_config(EXAMPLES / "server.toml")
    assert config.server.port == 8443 and config.server.database_url.startswith("sqlite:")
    assert config.tls.crl == Path("/etc/mor/tls/crl.pem")


def test_keyholder_example_loads_with_the_policy_gate() -> None:
    config = load_keyholder_config(EXAMPLES / "keyholder.toml")
    assert config.keyholder.policy == Path("/etc/mor/policy.toml")
    assert config.keyholder.server_identity.startswith("mor://")


def test_training_example_loads_with_a_kl_penalty() -> None:
    training = load_training_config(EXAMPLES / "training.toml")
    assert training.beta > 0 and training.router == "uniform" and training.use_lora  # the measured default
    assert training.data.router_pairs == Path("/srv/mor/data/router-pairs")  # the [data] table is read
