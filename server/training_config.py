"""``training.toml``: the ``[training]`` run, its ``[data]``, and ``[trainer]`` (how a remote trainer connects).

One file for both sides on purpose: the service (``mor server serve --training``) and every
trainer rank (``mor server train``) load the same prompts from it, and the trainer checks the
prompt-set digest the service reports before it asks for a single round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from server.config import FrozenConfig, load_toml_model
from server.errors import ConfigError
from server.training_data import DataSection


class TrainingSection(FrozenConfig):
    """``[training]`` of ``training.toml``; relative paths resolve against the file's folder."""

    model_path: Path = Field(description="the (warm-started) policy VLM checkpoint folder")
    output_dir: Path = Field(description="router, GRPO checkpoints, metrics.jsonl, rounds.jsonl")
    quorum: int = Field(default=2, ge=1, description="agents that must answer for a round to count")
    deadline_s: float = Field(default=60.0, gt=0, description="how long a round waits for answers")
    enrol_timeout_s: float = Field(default=600.0, gt=0, description="how long to wait for quorum agents to enrol")
    # uniform by default: on the pretrained policy with production-DP members, `mor eval` measured the
    # learned (input-conditioned MoR) router no better than the uniform mixture (-0.037 [-0.107, +0.033]
    # over 3 seeds), so it does not earn the public router rounds it costs (docs/eval.md, "The issue
    # #17 measurement"); "learned" stays available.
    router: Literal["learned", "uniform", "fixed"] = "uniform"
    fixed_weights: dict[str, float] | None = Field(default=None, description="router = fixed: agent -> weight")
    router_path: Path | None = Field(default=None, description="fused-only: a router fitted earlier (safetensors)")
    router_digest: str | None = Field(default=None, description="refuse router_path unless it has this digest")
    n_calibration: int = Field(default=48, ge=2, description="built-in corpus: public calibration items")
    n_public_pairs: int = Field(default=120, ge=4, description="built-in corpus: public pairs for the router fit")
    n_prompts: int = Field(default=32, ge=1, description="built-in corpus: GRPO training prompts")
    data: DataSection = Field(default_factory=DataSection,
                              description="the file's [data] table: datasets instead of the built-in corpus")
    seed: int = 0
    group_size: int = Field(default=4, ge=2)
    per_device_batch: int = Field(default=4, ge=2)
    max_steps: int = Field(default=10, ge=1)
    beta: float = Field(default=0.04, gt=0, description="KL weight to the frozen reference (must be > 0)")
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    max_completion_length: int = Field(default=32, ge=1)
    steps_per_generation: int = Field(
        default=1, ge=1, description="TRL's: one generation batch feeds this many optimisation steps (later steps "
                                     "off-policy, corrected by TRL's importance ratio); one round per step's slice")
    overlap_scoring: bool | Literal["auto"] = Field(
        default="auto", description="start each step's federated round as soon as its completions are generated, "
                                    "while the next are generated and log-probabilities computed "
                                    "(server/grpo_overlap.py); auto = when the policy runs on a GPU")
    rounds_per_generation: int = Field(
        default=1, ge=1, description="overlapped: rounds a generation batch is scored in (a divisor of "
                                     "steps_per_generation): 1 = one per batch, overlapping the log-probability "
                                     "passes; steps_per_generation = one per step's slice, overlapping generation "
                                     "too, at S times the members' per-round cost")
    use_lora: bool = True
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="policy weights; bfloat16/float16 also switch on that mixed precision")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = the GPU when there is one")
    attn_implementation: str | None = Field(
        default=None, description="eager, sdpa, flash_attention_2...; unset = transformers' default for the family")
    lora_target_modules: str | tuple[str, ...] | None = Field(
        default=None, description="a regex or module names; unset = the language model's attention projections, "
                                  "detected per family (server/vlm/families.py)")


class TrainerConnection(FrozenConfig):
    """``[trainer]``: how ``mor server train`` reaches the service (its own ``trainer`` certificate)."""

    server_url: str = Field(pattern=r"^https://", description="the service, e.g. https://mor.example:8443")
    cert: Path = Field(description="this trainer's certificate (role trainer, from the consortium CA)")
    key: Path = Field(description="its private key")
    ca: Path = Field(description="the consortium CA certificate")
    crl: Path | None = Field(default=None, description="the consortium CRL (checked on the server's certificate)")
    run_id: str = Field(default="run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                        description="names this run's rounds (run, step, rank); keep it across restarts")
    ready_timeout_s: float = Field(default=3600.0, gt=0, description="how long to wait for the service's stages")


class TrainingFile(FrozenConfig):
    training: TrainingSection
    data: DataSection = Field(default_factory=DataSection)
    trainer: TrainerConnection | None = None
    source: Path | None = None


def load_training_config(path: str | Path) -> TrainingSection:
    """Load ``training.toml`` (one precise ConfigError naming file and key on any problem)."""
    loaded = load_toml_model(path, TrainingFile)
    return loaded.training.model_copy(update={"data": loaded.data})


def load_trainer_connection(path: str | Path) -> TrainerConnection:
    """The ``[trainer]`` table of ``training.toml``, required by ``mor server train``."""
    loaded = load_toml_model(path, TrainingFile)
    if loaded.trainer is None:
        raise ConfigError(f"{path}: [trainer]: missing (server_url, cert, key, ca): mor server train needs it")
    return loaded.trainer
