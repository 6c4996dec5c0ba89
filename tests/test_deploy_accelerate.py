"""The Accelerate configs shipped in ``deploy/accelerate/``: each parses with Accelerate's own loader,
is the engine it says it is, and its launch line starts the trainer entry point (``mor server train``).

DeepSpeed need not be installed for this: the configs are read, not launched (the DDP one is
launched for real by ``tests/test_trainer_ranks.py``).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from mor_cli.main import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "accelerate"
EXPECTED = {"ddp": (DistributedType.MULTI_GPU, None), "fsdp": (DistributedType.FSDP, None),
            "zero2": (DistributedType.DEEPSPEED, 2), "zero3": (DistributedType.DEEPSPEED, 3)}


def test_the_four_engines_are_shipped_and_nothing_else() -> None:
    assert sorted(p.stem for p in DEPLOY.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_names_its_engine_and_launches_the_trainer(name: str) -> None:
    path = DEPLOY / f"{name}.yaml"
    config = load_config_from_file(str(path))  # Accelerate refuses unknown keys and bad values itself
    engine, zero_stage = EXPECTED[name]
    assert config.distributed_type == engine and config.num_processes >= 2 and not config.use_cpu
    assert config.mixed_precision == "no"  # training.toml's dtype decides (server/grpo.py), not the launcher
    if zero_stage is not None:
        assert config.deepspeed_config["zero_stage"] == zero_stage
    if engine == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2

    first = path.read_text("utf-8").splitlines()[0]
    assert first.startswith("# launch: ")
    argv = shlex.split(first.removeprefix("# launch: "))
    assert argv[:4] == ["accelerate", "launch", "--config_file", f"deploy/accelerate/{name}.yaml"]
    module = argv.index("-m")
    assert argv[module + 1] == "mor_cli.main"
    args = build_parser().parse_args(argv[module + 2:])  # the trainer entry point, as the CLI parses it
    assert (args.command, args.server_action, args.config) == ("server", "train", "training.toml")
