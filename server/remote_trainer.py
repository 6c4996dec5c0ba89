"""``mor server train``: one trainer rank, apart from the service, on TRL + Accelerate.

    mor server train --config training.toml                                    one process
    accelerate launch --config_file deploy/accelerate/ddp.yaml \\
        -m mor_cli.main server train --config training.toml                    N ranks (DDP, FSDP, ZeRO)

Every rank is the same program: Accelerate (inside TRL's ``GRPOTrainer``) makes the ranks one
data-parallel job; we write no distributed code of our own. Each rank authenticates with the
consortium's ``trainer`` certificate (``[trainer]`` in ``training.toml``), waits until the
service (``mor server serve --training training.toml``) has run its stages, checks that it
loaded the same prompt set as the service (digest), and runs GRPO with the same
:class:`~server.federated_reward.FederatedReward` as ``mor server run`` — only the transport
differs (:class:`~server.round_transport.RemoteRounds`): its reward calls become rounds keyed
``(run_id, step, rank)``.

Stopping: SIGTERM/SIGINT to any rank is agreed on by all ranks at the next step boundary
(one ``gather_object`` of the reasons per step), so every rank finishes the same step and the
main rank checkpoints it; a restart resumes there. At the end every rank writes its LoRA
tensors to ``output_dir/ranks/rank-<i>.safetensors`` and the main rank compares them
(``ranks.json``): data-parallel ranks that drifted apart would be a silent bug.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import httpx
import torch

from crypto.errors import CryptoError
from crypto.tls import client_ssl_context
from server.errors import ConfigError, TrainingError
from server.federated_reward import FederatedReward
from server.grpo import GRPOResult
from server.round_transport import POLL_WAIT_S, RemoteRounds
from server.runner import StopFlag
from server.trainer import train_policy
from server.trainer_rounds import prompt_set_sha256
from server.training_config import load_trainer_connection, load_training_config
from server.training_data import load_prompts
from wire.trainer import TrainerStep

log = logging.getLogger("mor.trainer")


def _agreed_stop(flag: StopFlag) -> Any:
    """A stop check every rank answers alike: the first reason any rank has (one small collective per step)."""
    from accelerate.utils import gather_object

    def stop() -> str | None:
        reasons = [r for r in gather_object([flag.requested()]) if r is not None]
        return reasons[0] if reasons else None

    return stop


def _reporter(rounds: RemoteRounds, run_id: str) -> Any:
    """The main rank's step records, sent to the service's audit log (what its status page shows)."""

    def finite(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def report(record: dict[str, Any]) -> None:
        rounds.report(TrainerStep(run_id=run_id, step=int(record["step"]), reward=finite(record.get("reward")),
                                  reward_std=finite(record.get("reward_std")), kl=finite(record.get("kl")),
                                  agents_answered=finite(record.get("agents_answered")),
                                  round_skipped=finite(record.get("round_skipped"))))

    return report


def compare_ranks(directory: Path, world_size: int) -> dict[str, Any]:
    """Load every rank's LoRA tensors and report whether they are identical (max absolute difference)."""
    from safetensors.torch import load_file

    tensors = [load_file(str(directory / f"rank-{r}.safetensors")) for r in range(world_size)]
    diff = 0.0
    for other in tensors[1:]:
        if other.keys() != tensors[0].keys():
            return {"world_size": world_size, "identical": False, "reason": "different tensor names"}
        diff = max([diff, *(float((other[k] - tensors[0][k]).abs().max()) for k in other)])
    return {"world_size": world_size, "identical": diff == 0.0, "max_abs_diff": diff, "tensors": len(tensors[0])}


def train(training_path: str | Path) -> GRPOResult:
    """Run this rank (see the module docstring); returns its GRPO result."""
    from accelerate import PartialState
    from safetensors.torch import save_file

    config, connection = load_training_config(training_path), load_trainer_connection(training_path)
    # this process's place under `accelerate launch` / torchrun (plainly: one process). It is shared state that
    # TRL's Accelerator reuses, so it must be told now what the trainer will run on: gloo on CPUs, NCCL on GPUs
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    ranks = PartialState(cpu=cpu)
    rank, out = ranks.process_index, config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        context = client_ssl_context(connection.cert, connection.key, connection.ca, connection.crl)
    except CryptoError as exc:
        raise ConfigError(f"{training_path}: [trainer]: {exc}") from None
    timeout = httpx.Timeout(60.0, read=POLL_WAIT_S + 60.0)
    with httpx.Client(base_url=connection.server_url, verify=context, timeout=timeout) as http, StopFlag() as flag:
        rounds = RemoteRounds(http)
        run = rounds.wait_ready(connection.ready_timeout_s)
        prompts, _ = load_prompts(config.data, n=config.n_prompts, seed=config.seed)
        mine = prompt_set_sha256(prompts)
        if mine != run.prompts_sha256:
            raise TrainingError(f"{training_path}: this trainer loaded prompt set {mine[:16]}…, the service "
                                f"{(run.prompts_sha256 or '?')[:16]}…: give both the same [data] and n_prompts")
        log.warning("rank %d/%d: the service is ready (router %s); training", rank, ranks.num_processes,
                    (run.router_digest or "?")[:16])
        reward = FederatedReward(rounds, prompts, step_log=out / f"rounds-rank{rank}.jsonl", run_id=connection.run_id,
                                 rank=rank)
        metrics = out / ("metrics.jsonl" if ranks.is_main_process else f"metrics-rank{rank}.jsonl")
        on_step = _reporter(rounds, connection.run_id) if ranks.is_main_process else None
        result, _ = train_policy(config, prompts, reward, _agreed_stop(flag), metrics=metrics, on_step=on_step)
        if ranks.is_main_process:
            rounds.report(TrainerStep(run_id=connection.run_id, step=result.global_step,
                                      event="stopped" if result.stopped_reason else "finished",
                                      reason=result.stopped_reason, adapter=str(result.adapter_path)))
    if result.final_lora:
        (out / "ranks").mkdir(exist_ok=True)
        tensors = {k: v.contiguous() for k, v in result.final_lora.items()}
        save_file(tensors, str(out / "ranks" / f"rank-{rank}.safetensors"))
        ranks.wait_for_everyone()
        if ranks.is_main_process:
            verdict = compare_ranks(out / "ranks", ranks.num_processes)
            (out / "ranks.json").write_text(json.dumps(verdict, indent=2), "utf-8")
            if not verdict["identical"]:
                raise TrainingError(f"the {ranks.num_processes} ranks ended with different LoRA weights: {verdict}")
    log.warning("rank %d: %s at step %d, adapter %s", rank, result.stopped_reason or "finished", result.global_step,
                result.adapter_path)
    return result
