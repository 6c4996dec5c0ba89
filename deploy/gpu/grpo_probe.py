"""GPU probe: a short bf16 GRPO run on a warm-started checkpoint, with the figures an operator needs.

Prints one JSON object: seconds per step, completion tokens per second, peak GPU memory, and the
per-step KL and reward. The reward here is a local length-and-gold reward (the federated reward
over three agent processes is exercised by the ``mor demo`` step of check.sh); this probe
isolates what the GPU itself does in bf16. Exits non-zero on any failure or on no CUDA.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def main(model: str, out: str, steps: int) -> int:
    import torch

    if not torch.cuda.is_available():
        print("grpo_probe: torch sees no CUDA device", file=sys.stderr)
        return 3
    from corpus.prompts import build_prompts
    from server.grpo import GRPORunConfig, run_grpo

    prompts = build_prompts(32, seed=0)
    gold = {p.prompt_id: (p.gold or "").lower() for p in prompts}
    tokens = [0]

    def reward(prompts: list[Any], completions: list[Any], prompt_id: list[str], completion_ids: list[Any],
               **_: Any) -> list[float]:
        tokens[0] += sum(len(ids) for ids in completion_ids)
        return [float(bool(gold[pid]) and gold[pid] in c[0]["content"].lower()) - 0.01 * len(c[0]["content"]) / 10
                for pid, c in zip(prompt_id, completions, strict=True)]

    config = GRPORunConfig(output_dir=Path(out), group_size=8, per_device_batch=32, max_steps=steps,
                           max_completion_length=48, learning_rate=2e-5, beta=0.04, dtype="bfloat16",
                           device="cuda", save_steps=steps)
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run_grpo(model_path=Path(model), prompts=prompts, reward_fn=reward, config=config, resume=False)
    seconds = time.perf_counter() - started
    kl = [s.get("kl") for s in result.steps]
    report = {
        "steps": len(result.steps), "seconds": round(seconds, 2), "seconds_per_step": round(seconds / steps, 3),
        "completion_tokens_per_s": round(tokens[0] / seconds, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "gpu": torch.cuda.get_device_name(0), "dtype": "bfloat16",
        "kl": kl, "reward": [s.get("reward") for s in result.steps], "lora_delta_norm": result.lora_delta_norm,
    }
    print(json.dumps(report, indent=2))
    if len(result.steps) != steps or not all(isinstance(k, float) and math.isfinite(k) for k in kl):
        print("grpo_probe: missing steps or non-finite KL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 6))
