"""Provision the demo's consortium in one folder: CA, certificates, private data and every party's config.

Everything a real deployment would hand out by hand is made here, from the one policy file,
with the shared harness (:mod:`sim.harness`: CA and certificates, server and key-holder
configs); what is the demo's own is its members, their private data and the run's policy:

* the consortium CA (named after ``policy.consortium``) and certificates for the server and
  key holder (served on ``localhost``/``127.0.0.1``), the three agents and an auditor (the
  demo's own mTLS identity for readiness probes);
* the run's policy file: the chosen one copied byte for byte — the members train under it as
  it is, with DP noise from the OS CSPRNG — except that a ``fused-only`` policy which opts in
  to public rounds gets ``privacy.public_round_digests`` set to this run's public calibration
  and router rounds (what a consortium publishes; ``mor server public-digests``), since
  members and the key holder open no other round per member;
* each agent's private preference pairs (its own hidden style on its own domain) and its
  ``agent.toml``; the server's ``server.toml`` and ``training.toml``; under ``fused-only`` the
  key holder's ``keyholder.toml``.

Folder layout (relative to ``out``)::

    policy.toml  pki/  auditor/  logs/
    server/{server.toml,training.toml,data/,out/}   keyholder/{keyholder.toml,data/}
    agents/<name>/{agent.toml,data/,state/}
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.errors import ProvisionError
from sim.harness import LOOPBACK, free_port, keyholder_config, server_config
from sim.harness import write_toml as _write_toml

MARKER = ".mor-demo"
PRETRAINED_GRPO_LR = 5e-4  # with beta 0.1: the budget docs/eval.md measured keeping accuracy (KL 0.04)
PRETRAINED_GRPO_BETA = 0.1
HEADER = "written by `mor demo` (sim/demo/provision.py)"


@dataclass(frozen=True)
class AgentSpec:
    """One demo member: its private preference style, reward-model architecture and budget share."""

    name: str
    style: str
    arch: str
    params: Mapping[str, int | float | str | bool]
    budget_share: float  # its local epsilon = share x the policy's max_epsilon


DEMO_AGENTS: tuple[AgentSpec, ...] = (
    AgentSpec("medical", "medical", "frozen-mlp", {"hidden": 64}, 0.75),
    AgentSpec("finance", "finance", "tiny-vlt", {"dim": 32, "layers": 2}, 1.0),
    AgentSpec("detail", "detail", "lora-minilm", {}, 0.5),
)


@dataclass(frozen=True)
class Scale:
    """How much work a run does; ``quick()`` is the smoke-test size, ``default()`` the demo."""

    n_pairs: int
    dp_epochs: int
    n_calibration: int
    n_public_pairs: int
    n_prompts: int
    prompts_per_step: int
    grpo_steps: int
    max_completion_length: int
    learning_rate: float
    n_eval: int
    beta: float = 0.04  # KL weight to the reference

    @classmethod
    def quick(cls) -> Scale:
        return cls(n_pairs=96, dp_epochs=2, n_calibration=12, n_public_pairs=24, n_prompts=8, prompts_per_step=1,
                   grpo_steps=3, max_completion_length=12, learning_rate=5e-3, n_eval=24)

    @classmethod
    def default(cls) -> Scale:
        return cls(n_pairs=400, dp_epochs=4, n_calibration=32, n_public_pairs=96, n_prompts=48, prompts_per_step=2,
                   grpo_steps=16, max_completion_length=16, learning_rate=5e-3, n_eval=96)

    def for_pretrained(self) -> Scale:
        """The same run for the pretrained 135M policy: whole answers (up to 24 tokens), a LoRA rate and a
        KL weight that move a pretrained model without breaking its language. The toy's 5e-3 would;
        at 2e-3 / beta 0.04 `mor eval` measured every row collapsing it (KL 0.5-3, easy-vqa accuracy
        0.63 -> 0.00-0.40), at 5e-4 / beta 0.1 accuracy held with KL 0.04 (docs/eval.md)."""
        from dataclasses import replace

        return replace(self, max_completion_length=24, learning_rate=PRETRAINED_GRPO_LR, beta=PRETRAINED_GRPO_BETA)


@dataclass(frozen=True)
class AgentFiles:
    spec: AgentSpec
    identity: str
    config: Path
    state_dir: Path
    epsilon: float
    delta: float


@dataclass
class Deployment:
    """Paths and identities of everything :func:`provision` wrote: the demo's consortium as deployed."""

    out: Path
    policy_path: Path
    source_policy: Path
    policy: Any  # policies.Policy
    consortium: str
    ca_cert: Path
    crl: Path
    server_identity: str
    server_url: str
    server_config: Path
    training_config: Path
    server_data: Path
    training_out: Path
    keyholder_config: Path | None
    keyholder_url: str | None
    keyholder_data: Path | None
    auditor_cert: Path
    auditor_key: Path
    agents: list[AgentFiles] = field(default_factory=list)
    insecure: list[str] = field(default_factory=list)

    @property
    def fused_only(self) -> bool:
        return bool(self.policy.privacy.mode == "fused-only")

    def auditor_context(self) -> Any:
        """The auditor's TLS 1.3 client context (for readiness probes and status reads)."""
        from crypto.tls import client_ssl_context

        return client_ssl_context(self.auditor_cert, self.auditor_key, self.ca_cert, self.crl)


def write_toml(path: Path, tables: Mapping[str, Mapping[str, object]]) -> Path:
    """One ``[table]`` per entry (None values left out), headed by who wrote it."""
    return _write_toml(path, tables, header=HEADER)


def prepare_out(out: Path, *, overwrite: bool) -> None:
    """Make ``out`` an empty demo folder; refuse to touch a non-empty folder that is not a demo's."""
    if out.exists() and not out.is_dir():
        raise ProvisionError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ProvisionError(f"{out}: not empty and not a previous `mor demo` output; choose another --out")
        if not overwrite:
            raise ProvisionError(f"{out}: holds a previous demo run; pass --overwrite to replace it, "
                                 "or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("This folder was written by `mor demo`; --overwrite may delete it.\n", "utf-8")


def run_policy(source: Path, out: Path, *, scale: Scale, seed: int) -> tuple[Path, Any, list[str]]:
    """The policy every party loads, written to ``out/policy.toml``; plus what it makes insecure."""
    from policies import PolicyError, load_policy, render_toml
    from server.training_data import DataSection, public_round_digests

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its insecure settings are reported by the caller
            policy = load_policy(source)
    except PolicyError as exc:
        raise ProvisionError(f"--policy: {exc}") from None
    target = out / "policy.toml"
    if policy.privacy.mode == "fused-only" and policy.privacy.public_rounds_per_agent:
        digests = public_round_digests(DataSection(), n_calibration=scale.n_calibration,
                                       n_public_pairs=scale.n_public_pairs, seed=seed)
        policy = policy.model_copy(update={"privacy": policy.privacy.model_copy(
            update={"public_round_digests": list(digests.values())})})
        target.write_text(f"# {source} with privacy.public_round_digests set to this run's public calibration and\n"
                          "# router rounds, written by `mor demo` (a consortium publishes these: mor server "
                          "public-digests).\n" + render_toml(policy), "utf-8")
    else:
        shutil.copyfile(source, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = load_policy(target)
    return target, policy, list(policy.insecure_reasons())


def _agent_tables(spec: AgentSpec, consortium: Deployment, tls: Mapping[str, object], scale: Scale,
                  epsilon: float, delta: float) -> dict[str, Mapping[str, object]]:
    base = consortium.out / "agents" / spec.name
    return {
        "agent": {"server_url": consortium.server_url, "server_identity": consortium.server_identity,
                  "policy": str(consortium.policy_path), "data_dir": str(base / "data"),
                  "state_dir": str(base / "state"), "insecure_pilot": False},
        "tls": tls,
        "model": {"arch": spec.arch, "params": dict(spec.params), "disclose_architecture": True},
        "privacy": {"epsilon": round(epsilon, 6), "delta": delta, "accountant": "prv"},
        "training": {"epochs": scale.dp_epochs, "batch_size": 32, "lr": 0.01, "max_grad_norm": 1.0},
        "network": {"poll_wait_s": 5.0, "read_timeout_s": 30.0, "retry_base_s": 0.2, "retry_max_s": 2.0},
    }


def write_training_config(consortium: Deployment, *, model_path: Path, scale: Scale, seed: int = 0) -> Path:
    """The server's ``training.toml``: the policy's round shape, the scale's sizes, the policy model to align.

    Written separately from :func:`provision` because the (warm-started) model is usually made
    while the agents train, after everything else is provisioned.
    """
    policy = consortium.policy
    group = policy.rounds.group_size
    return write_toml(consortium.training_config, {"training": {
        "model_path": str(model_path), "output_dir": str(consortium.training_out),
        # every demo agent must answer (at least the policy's quorum). The demo asks for the learned
        # router although `uniform` is the measured default (docs/eval.md): it exists to run every
        # exchange a consortium can use, the router's public rounds and fit included.
        "quorum": max(policy.rounds.quorum, len(consortium.agents)), "deadline_s": float(policy.rounds.deadline_s),
        "enrol_timeout_s": 600.0, "router": "learned", "n_calibration": scale.n_calibration,
        "n_public_pairs": scale.n_public_pairs, "n_prompts": scale.n_prompts, "seed": seed, "group_size": group,
        "per_device_batch": group * scale.prompts_per_step, "max_steps": scale.grpo_steps, "beta": scale.beta,
        "learning_rate": scale.learning_rate, "max_completion_length": scale.max_completion_length,
        "use_lora": True,
    }})


def provision(out: Path, source_policy: Path, *, scale: Scale, seed: int = 0,
              agents: tuple[AgentSpec, ...] = DEMO_AGENTS) -> Deployment:
    """Write the CA, certificates, policy, private data and configs of one demo consortium into ``out``.

    The server's ``training.toml`` comes later, from :func:`write_training_config`.
    """
    from corpus import build_client_pairs, save_pairs
    from crypto.errors import PKIError
    from sim.harness import ConsortiumPKI

    policy_path, policy, insecure = run_policy(source_policy, out, scale=scale, seed=seed)
    fused_only = policy.privacy.mode == "fused-only"
    try:
        pki = ConsortiumPKI.create(out / "pki", policy.consortium)
        server, auditor = pki.issue("server", "server"), pki.issue("auditor", "auditor")
        keyholder = pki.issue("keyholder", "keyholder") if fused_only else None
        for spec in agents:
            pki.issue(spec.name, "client")
    except PKIError as exc:
        raise ProvisionError(f"{out / 'pki'}: {exc}") from None
    server_port, keyholder_port = free_port(), free_port()
    consortium = Deployment(
        out=out, policy_path=policy_path, source_policy=source_policy, policy=policy,
        consortium=policy.consortium, ca_cert=pki.ca_cert, crl=pki.crl, server_identity=server.identity,
        server_url=f"https://{LOOPBACK}:{server_port}", server_config=out / "server" / "server.toml",
        training_config=out / "server" / "training.toml", server_data=out / "server" / "data",
        training_out=out / "server" / "out",
        keyholder_config=out / "keyholder" / "keyholder.toml" if keyholder else None,
        keyholder_url=f"https://{LOOPBACK}:{keyholder_port}" if keyholder else None,
        keyholder_data=out / "keyholder" / "data" if keyholder else None,
        auditor_cert=auditor.cert, auditor_key=auditor.key, insecure=insecure,
    )
    for spec in agents:
        party = pki.party(spec.name)
        epsilon = spec.budget_share * policy.privacy.max_epsilon
        tables = _agent_tables(spec, consortium, pki.tls(spec.name), scale, epsilon, policy.privacy.max_delta)
        config = write_toml(out / "agents" / spec.name / "agent.toml", tables)
        save_pairs(build_client_pairs(spec.style, scale.n_pairs, seed=seed), out / "agents" / spec.name / "data")
        consortium.agents.append(AgentFiles(spec, party.identity, config, out / "agents" / spec.name / "state",
                                            epsilon, policy.privacy.max_delta))
    server_config(consortium.server_config, data=consortium.server_data, tls=pki.tls("server"),
                  policy=consortium.policy_path, port=server_port, keyholder_url=consortium.keyholder_url,
                  ckks_secret=not fused_only, header=HEADER, output_dir=str(consortium.training_out),
                  long_poll_max_s=10.0)
    if keyholder is not None and consortium.keyholder_config is not None and consortium.keyholder_data is not None:
        keyholder_config(consortium.keyholder_config, data=consortium.keyholder_data, tls=pki.tls("keyholder"),
                         server_identity=server.identity, port=keyholder_port, policy=consortium.policy_path,
                         header=HEADER)
    return consortium
