"""``keyholder.toml``: where the key holder binds, its key files, and whom it serves.

    [keyholder]
    host = "0.0.0.0"
    port = 9443
    server_identity = "mor://hospitals/server/aggregator"   # the only caller of /v1/decrypt-fused
    secret_context = "data/ckks-secret.bin"                 # created (0600) on first start
    audit_dir = "data/audit"
    signing_key = "data/keyholder-signing.pem"
    precision = 0.0001                                      # released values are rounded to this
    policy = "policy.toml"          # the consortium policy: per-agent decryption of public rounds
                                    # only if its privacy.public_rounds_per_agent = true (unset: never)

    [tls]
    cert = "pki/keyholder/cert.pem"
    key = "pki/keyholder/key.pem"
    ca = "pki/ca.pem"
    crl = "pki/crl.pem"

    [connections]                          # optional: as in server.toml (server.config.ConnectionLimits)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from server.config import ConnectionLimits, FrozenConfig, TLSFiles, load_toml_model
from server.observability.settings import ObservabilitySettings


class KeyHolderSection(FrozenConfig):
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(9443, ge=1, le=65535, description="TCP port to bind")
    server_identity: str = Field(description="the aggregation server's mor:// identity: the only decrypt caller")
    secret_context: Path = Field(description="the CKKS secret context file (created on first start)")
    audit_dir: Path = Field(description="directory of the key holder's own audit log")
    signing_key: Path = Field(description="the key holder's Ed25519 key (audit checkpoints)")
    precision: float = Field(1e-4, gt=0, le=1, description="decrypted values are rounded to this")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body accepted")
    requests_per_s: float = Field(50.0, gt=0, description="per-identity rate limit (token bucket rate)")
    policy: Path | None = Field(None, description="the consortium policy; per-agent decryption of public "
                                                  "calibrate/router rounds only if it sets "
                                                  "privacy.public_rounds_per_agent = true (unset: never)")


class KeyHolderConfig(FrozenConfig):
    keyholder: KeyHolderSection
    tls: TLSFiles
    connections: ConnectionLimits = Field(default=ConnectionLimits(),
                                          description="bounds on connections and handshakes, as for the server")
    observability: ObservabilitySettings = Field(default=ObservabilitySettings(),
                                                 description="probe/metrics listener and log format, as for the server")
    source: Path | None = None


def load_keyholder_config(path: str | Path) -> KeyHolderConfig:
    return load_toml_model(path, KeyHolderConfig)
