"""The agent's configuration: ``agent.toml`` -> frozen, validated :class:`AgentConfig`.

Why so strict: this file decides whom the agent trusts (CA, CRL, pinned server identity),
how much privacy its members' data may spend, and how much work a server may ask of it. An
unknown key is an error (a typo must not silently drop a protection), relative paths are
resolved against the file's own folder, and cross-checks run against the *consortium policy*
the agent was given: a local (ε, δ) above the policy's maximum, a server from another
consortium, or ``insecure_pilot`` under a non-pilot policy are refused at load time. Every
problem is one :class:`~client_agent.errors.AgentConfigError` naming the file, the
``[table].key`` and the reason. Help text lives once, in the field descriptions; ``mor client
init-config`` renders the template from them.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from client_agent.errors import AgentConfigError
from policies.render import toml_value

SERVER_IDENTITY_RE = re.compile(r"^mor://([A-Za-z0-9._-]+)/server/[A-Za-z0-9._-]+$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class InsecureAgentWarning(UserWarning):
    """The agent runs with a protection switched off (``insecure_pilot``)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Section):
    server_url: str = Field(description="https URL of the aggregation server")
    server_identity: str = Field(description="pinned mor:// URI SAN the server certificate must carry")
    server_cert_sha256: str | None = Field(
        default=None, description="optional pin: SHA-256 (hex) of the server certificate")
    policy: Path = Field(description="the consortium policy TOML this agent was given")
    data_dir: Path = Field(default=Path("data"),
                           description="private preference pairs: a `mor data import --kind pairs` dataset")
    state_dir: Path = Field(
        default=Path("state"), description="audit log, task ledger, reward model, privacy report")
    signing_key: Path | None = Field(
        default=None, description="Ed25519 key (envelopes, report, audit); default state_dir/signing-key.pem")
    insecure_pilot: bool = Field(
        default=False, description="INSECURE: DP noise and sampling from a seedable PRNG, for reproducible "
                                 "experiments (pilot policies only)")

    @field_validator("server_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL (the server is reached over mutual TLS only)")
        return value.rstrip("/")

    @field_validator("server_identity")
    @classmethod
    def _server_identity(cls, value: str) -> str:
        if not SERVER_IDENTITY_RE.match(value):
            raise ValueError(f"{value!r} is not a server identity (mor://<consortium>/server/<name>)")
        return value

    @field_validator("server_cert_sha256")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        normal = value.lower().replace(":", "").removeprefix("sha256")
        if not SHA256_RE.match(normal):
            raise ValueError("must be 64 hex digits (the certificate's SHA-256; colons allowed)")
        return normal


class TLSSection(_Section):
    cert: Path = Field(description="this agent's certificate, issued by the consortium CA")
    key: Path = Field(description="this agent's TLS private key (0600)")
    ca: Path = Field(description="the consortium CA certificate: the only trust anchor")
    crl: Path = Field(description="the consortium CRL (the server certificate is checked against it)")


class ModelSection(_Section):
    arch: str = Field(
        default="frozen-mlp",
        description="frozen-mlp, tiny-vlt, lora-minilm, hf-text, hf-vlm (params.path) or package.module:factory")
    params: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="constructor arguments of the architecture (e.g. hidden = 64)")
    disclose_architecture: bool = Field(
        default=False, description="tell the server the architecture (default: undisclosed)")


class PrivacySection(_Section):
    epsilon: float = Field(gt=0, description="local DP budget epsilon (<= the policy's max_epsilon)")
    delta: float = Field(gt=0, lt=1, description="local DP budget delta (<= the policy's max_delta, < 1/N)")
    accountant: Literal["prv", "rdp"] = Field(default="prv", description="privacy accountant")


class TrainingSection(_Section):
    epochs: int = Field(default=5, ge=1, le=10_000, description="DP-SGD epochs over the private pairs")
    batch_size: int = Field(default=64, ge=1, description="expected batch size (Poisson sampling)")
    lr: float = Field(default=0.05, gt=0, description="Adam learning rate")
    max_grad_norm: float = Field(default=1.0, gt=0, description="per-pair gradient clipping norm")
    clipping: Literal["auto", "flat", "ghost", "bk"] = Field(
        default="auto", description="how per-pair gradient norms are found (same clipping, noise, epsilon): auto = "
        "the architecture's cheapest, flat = per-pair gradients, ghost = Opacus ghost clipping, bk = one-pass "
        "book-keeping (nn.Linear-only models)")
    seed: int | None = Field(default=None, description="fixed RNG seed: predictable DP noise, insecure_pilot only")


class LimitsSection(_Section):
    max_items_per_task: int = Field(default=1024, ge=1, description="refuse tasks with more items than this")
    max_items_per_day: int = Field(default=100_000, ge=1, description="daily scoring cap (items per UTC day)")
    max_image_pixels: int = Field(default=1024 * 1024, ge=64, description="refuse larger server-sent images")
    score_batch_size: int = Field(default=64, ge=1, le=4096, description="items scored per forward pass")


class NetworkSection(_Section):
    poll_wait_s: float = Field(default=20.0, gt=0, le=300, description="long-poll wait per GET /v1/tasks/next")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP + TLS connect timeout")
    read_timeout_s: float = Field(default=60.0, gt=0, description="read timeout (must exceed poll_wait_s)")
    retry_base_s: float = Field(default=0.5, gt=0, description="first retry delay; doubles per attempt, with jitter")
    retry_max_s: float = Field(default=30.0, gt=0, description="cap on one retry delay")
    max_attempts: int = Field(
        default=0, ge=0, description="attempts per request on network errors/5xx; 0 = until shutdown")


class AgentConfig(_Section):
    """One agent's configuration (see the module docstring)."""

    agent: AgentSection
    tls: TLSSection
    model: ModelSection = Field(default_factory=lambda: ModelSection())
    privacy: PrivacySection
    training: TrainingSection = Field(default_factory=lambda: TrainingSection())
    limits: LimitsSection = Field(default_factory=lambda: LimitsSection())
    network: NetworkSection = Field(default_factory=lambda: NetworkSection())
    source: Path | None = Field(default=None, exclude=True, description="the file this was loaded from")

    @property
    def consortium(self) -> str:
        match = SERVER_IDENTITY_RE.match(self.agent.server_identity)
        assert match is not None
        return match.group(1)

    @property
    def signing_key_path(self) -> Path:
        return self.agent.signing_key or self.agent.state_dir / "signing-key.pem"

    @property
    def model_dir(self) -> Path:
        return self.agent.state_dir / "reward-model"

    @property
    def privacy_report_path(self) -> Path:
        return self.agent.state_dir / "privacy-report.json"

    @property
    def audit_dir(self) -> Path:
        return self.agent.state_dir / "audit"

    @property
    def ledger_path(self) -> Path:
        return self.agent.state_dir / "ledger.sqlite"

    def identity(self) -> str:
        """This agent's ``mor://`` identity, read from its certificate (the only source of it)."""
        from crypto.errors import PKIError
        from crypto.pki import identity_of

        try:
            return identity_of(self.tls.cert.read_bytes())
        except OSError as exc:
            raise AgentConfigError(f"{self._where('tls', 'cert')}: cannot read {self.tls.cert}: {exc.strerror}") \
                from None
        except PKIError as exc:
            raise AgentConfigError(f"{self._where('tls', 'cert')}: {self.tls.cert}: {exc}") from None

    def consortium_policy(self) -> Any:
        """The consortium policy (``policies.Policy``) named by ``[agent].policy``."""
        from policies import PolicyError, load_policy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the agent's own insecure warning is raised at load
            try:
                return load_policy(self.agent.policy)
            except PolicyError as exc:
                raise AgentConfigError(f"{self._where('agent', 'policy')}: {exc}") from None

    def _where(self, table: str, key: str) -> str:
        return f"{self.source or '<agent config>'}: [{table}].{key}"


def _describe(error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    where = f"[{loc[0]}]" + ("." + ".".join(loc[1:]) if len(loc) > 1 else "") if loc else "(top level)"
    reason = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        reason = "unknown key (typo?)"
    elif error["type"] == "missing":
        reason = "required key is missing"
    elif "input" in error and not isinstance(error["input"], dict):
        reason = f"{reason} (got {error['input']!r})"
    return f"{where}: {reason}"


def _resolve(model: BaseModel, base: Path) -> Any:
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            updates[name] = _resolve(value, base)
        elif isinstance(value, Path) and name != "source" and not value.is_absolute():
            updates[name] = (base / value).resolve()
    return model.model_copy(update=updates)


def _check_against_policy(config: AgentConfig) -> None:
    """Cross-checks with the consortium policy and the reward-model registry."""
    policy = config.consortium_policy()
    where = config._where
    if policy.consortium != config.consortium:
        raise AgentConfigError(f"{where('agent', 'server_identity')}: server is in consortium {config.consortium!r} "
                               f"but the policy is for {policy.consortium!r}")
    if config.privacy.epsilon > policy.privacy.max_epsilon:
        raise AgentConfigError(f"{where('privacy', 'epsilon')}: {config.privacy.epsilon} exceeds the consortium "
                               f"policy's max_epsilon {policy.privacy.max_epsilon} ({config.agent.policy})")
    if config.privacy.delta > policy.privacy.max_delta:
        raise AgentConfigError(f"{where('privacy', 'delta')}: {config.privacy.delta:g} exceeds the consortium "
                               f"policy's max_delta {policy.privacy.max_delta:g} ({config.agent.policy})")
    if config.agent.insecure_pilot and not policy.pilot:
        raise AgentConfigError(f"{where('agent', 'insecure_pilot')}: only allowed under a pilot policy "
                               f"({config.agent.policy} has pilot = false)")
    if config.training.seed is not None and not config.agent.insecure_pilot:
        raise AgentConfigError(f"{where('training', 'seed')}: a fixed seed makes DP noise predictable; "
                               "only allowed with insecure_pilot = true")
    if config.network.read_timeout_s <= config.network.poll_wait_s:
        raise AgentConfigError(f"{where('network', 'read_timeout_s')}: {config.network.read_timeout_s} must exceed "
                               f"poll_wait_s {config.network.poll_wait_s} (a long poll would time out)")
    _check_model(config)


def _check_model(config: AgentConfig) -> None:
    from client_agent.errors import RewardModelError
    from client_agent.rewards.registry import model_param_problems

    try:
        problems = model_param_problems(config.model.arch, dict(config.model.params))
    except RewardModelError as exc:  # an entry point that cannot be imported
        problems = [f"arch: {exc}"]
    if problems:
        key, _, reason = problems[0].partition(": ")
        raise AgentConfigError(f"{config._where('model', key)}: {reason}")


def parse_agent_config(raw: dict[str, Any], source: Path, *, check_policy: bool = True) -> AgentConfig:
    """Validate an already-parsed TOML document; paths resolve against ``source``'s folder."""
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise AgentConfigError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    config = _resolve(config, source.resolve().parent).model_copy(update={"source": source})
    if check_policy:
        _check_against_policy(config)
    if config.agent.insecure_pilot:
        warnings.warn(f"{source}: INSECURE PILOT AGENT — DP noise from a seedable PRNG, not a CSPRNG; recorded in the "
                      "privacy report and the agent's audit log", InsecureAgentWarning, stacklevel=2)
    return config


def load_agent_config(path: str | Path, *, check_policy: bool = True) -> AgentConfig:
    """Load ``agent.toml``; one :class:`AgentConfigError` (file, key, reason) on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise AgentConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_agent_config(raw, path, check_policy=check_policy)


def render_template(values: dict[str, dict[str, Any]] | None = None) -> str:
    """An ``agent.toml`` with every key, its description and its default (or ``values``)."""
    values = values or {}
    lines = ["# MoR-Secure client agent configuration (mor client init-config).",
             "# Relative paths are resolved against this file's folder.", ""]
    for table, field in AgentConfig.model_fields.items():
        section = field.annotation
        if table == "source" or not isinstance(section, type) or not issubclass(section, BaseModel):
            continue
        lines.append(f"[{table}]")
        for key, info in section.model_fields.items():
            lines.append(f"# {info.description}")
            given = values.get(table, {}).get(key)
            if given is not None:
                lines.append(f"{key} = {toml_value(given)}")
            elif info.is_required():
                lines.append(f"# {key} = ...   (required)")
            else:
                default = info.get_default(call_default_factory=True)
                lines.append(f"{key} = {toml_value(default)}" if default is not None else f"# {key} =")
        lines.append("")
    return "\n".join(lines)
