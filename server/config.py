"""Server and key-holder configuration: TOML files -> frozen, validated models.

Relative paths in a config are resolved against the config file's folder, so a deployment
directory can be moved as a whole. Every problem is one :class:`~server.errors.ConfigError`
naming the file, the key (``[table].key``) and the reason — never a pydantic traceback.

Example ``server.toml``::

    [server]
    host = "0.0.0.0"
    port = 8443
    policy = "policies/healthcare.toml"
    database_url = "sqlite:///data/state.db"     # or postgresql+psycopg://... ([postgres] extra)
    audit_dir = "data/audit"
    signing_key = "data/server-signing.pem"      # Ed25519; created (0600) on first start
    ckks_secret_context = "data/ckks-secret.bin" # ckks mode: created (0600) on first start
    keyholder_url = "https://keyholder:9443"     # fused-only: the server holds no secret key
    output_dir = "data/out"

    [tls]
    cert = "pki/server/cert.pem"
    key = "pki/server/key.pem"
    ca = "pki/ca.pem"
    crl = "pki/crl.pem"                          # re-read whenever the file changes

    [connections]                                # optional; the defaults below (see ConnectionLimits)
    max_connections = 1024
    max_connections_per_ip = 64
    max_handshakes = 128
    max_handshakes_per_ip = 16
    handshake_timeout_s = 10.0
    idle_timeout_s = 15.0
    fd_reserve = 128

    [observability]                              # optional (server.observability.settings)
    probe_host = "127.0.0.1"                     # plain-HTTP /livez /readyz /metrics: no client certificate
    probe_port = 9464                            # leave out: no probe listener
    log_format = "text"                          # text | json; --log-format wins
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from server.errors import ConfigError
from server.observability.settings import ObservabilitySettings
from server.state_files import check_database_url

ModelT = TypeVar("ModelT", bound=BaseModel)


class FrozenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSFiles(FrozenConfig):
    """The TLS material of one serving party (PEM files)."""

    cert: Path = Field(description="this party's certificate (issued by the consortium CA)")
    key: Path = Field(description="this party's private key (0600)")
    ca: Path = Field(description="the consortium CA certificate: the only trust anchor")
    crl: Path = Field(description="the consortium CRL; checked at the handshake and on every request")


class ServerSection(FrozenConfig):
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8443, ge=1, le=65535, description="TCP port to bind")
    policy: Path = Field(description="the consortium policy TOML")
    database_url: str = Field(description="SQLAlchemy URL of the durable state: sqlite:///state.db or "
                                          "postgresql+psycopg://user:password@host/db (the [postgres] extra)")
    audit_dir: Path = Field(description="directory of the server's audit log")
    signing_key: Path = Field(description="the server's Ed25519 key (receipts, audit checkpoints)")
    ckks_secret_context: Path | None = Field(None, description="ckks mode: the CKKS secret context file")
    keyholder_url: str | None = Field(None, description="fused-only mode: https URL of the key holder")
    output_dir: Path = Field(Path("out"), description="where runs write models, reports and plots")
    long_poll_max_s: float = Field(30.0, gt=0, le=300, description="longest wait a task poll may ask for")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        try:
            check_database_url(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("database_url").lstrip(" :")) from None
        return value

    @field_validator("keyholder_url")
    @classmethod
    def _https_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL (the key holder is reached over mutual TLS)")
        return value


class ConnectionLimits(FrozenConfig):
    """``[connections]``: how many connections anyone may hold on the API port, and for how long.

    Why: TLS (and so the certificate check) starts only after a connection is accepted, so
    without bounds a stranger with no certificate holds every file descriptor or churns
    handshakes until memory grows. Past a bound a new connection is closed at ``accept``,
    before any TLS state exists. The defaults suit hundreds of member sites under
    ``LimitNOFILE=65536``; the process caps ``max_connections`` at its fd limit minus ``fd_reserve``.
    """

    max_connections: int = Field(
        default=1024, ge=8, description="open connections in total (handshaking + authenticated)")
    max_connections_per_ip: int = Field(
        default=64, ge=1, description="open connections from one peer (an IPv4 address or an IPv6 /64)")
    max_handshakes: int = Field(
        default=128, ge=1, description="TLS handshakes in progress in total; when full, the oldest (older than "
                                       "0.5 s) is dropped for a newcomer")
    max_handshakes_per_ip: int = Field(default=16, ge=1, description="TLS handshakes in progress from one peer")
    handshake_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="a connection not authenticated by then is closed")
    idle_timeout_s: float = Field(
        default=15.0, gt=0, le=600, description="an authenticated connection with no request in flight is closed "
                                                "after this long without one")
    fd_reserve: int = Field(
        default=128, ge=16, description="file descriptors kept for the database, logs and models: connections "
                                        "are capped at RLIMIT_NOFILE minus this")


class ServerConfig(FrozenConfig):
    server: ServerSection
    tls: TLSFiles
    connections: ConnectionLimits = Field(default=ConnectionLimits(),
                                          description="bounds on connections and handshakes (denial of service)")
    observability: ObservabilitySettings = Field(default=ObservabilitySettings(),
                                                 description="probe/metrics listener and log format")
    source: Path | None = Field(None, description="the file this was loaded from")


def _describe(error: Any) -> str:
    location = [str(part) for part in error["loc"]]
    where = f"[{location[0]}]" + ("." + ".".join(location[1:]) if len(location) > 1 else "")
    return f"{where}: {error['msg']}"


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, BaseModel):
        updates = {name: _resolve_paths(getattr(value, name), base) for name in type(value).model_fields}
        return value.model_copy(update=updates)
    if isinstance(value, Path) and not value.is_absolute():
        return (base / value).resolve()
    return value


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative ``sqlite:///rel/path`` absolute against ``base`` (other URLs unchanged)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


def load_toml_model(path: str | Path, model: type[ModelT]) -> ModelT:
    """Read ``path`` as TOML and validate it as ``model``; one precise ConfigError on failure."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        loaded = model.model_validate({**raw, "source": path.resolve()})
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    return _resolve_paths(loaded, path.resolve().parent)


def load_server_config(path: str | Path) -> ServerConfig:
    """Load ``server.toml`` (see the module docstring)."""
    config = load_toml_model(path, ServerConfig)
    base = Path(path).resolve().parent
    section = config.server.model_copy(update={"database_url": resolve_sqlite_url(config.server.database_url, base)})
    return config.model_copy(update={"server": section})
