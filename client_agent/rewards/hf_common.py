"""What the two Hugging Face reward-model adapters share: LoRA placement, loading, pooling.

Why LoRA and not full fine-tuning: DP-SGD's noise grows with the number of trained
parameters (each gets noise of the same scale), so a member's few thousand private pairs
only teach a model through a small adapter; the frozen base stays exactly the public
checkpoint. LoRA goes on the attention query/value projections (the placement PEFT uses by
default for most families), only inside the *language* model for a VLM, so the vision tower
stays frozen and Opacus only sees ``nn.Linear`` layers to privatise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from client_agent.errors import CheckpointError, RewardModelError

BASE_DIR = "base"  # inside a saved reward model: the base config + tokenizer/processor (weights are in ours)
QUERY_VALUE = ("q_proj", "v_proj", "query", "value", "c_attn", "qkv_proj", "Wqkv")


def lora_targets(model: nn.Module, *, within: str | None = None, names: tuple[str, ...] = QUERY_VALUE) -> list[str]:
    """Full names of the ``nn.Linear`` layers to adapt (optionally only those under ``within``)."""
    found = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in names
             and (within is None or within in name.split("."))]
    if not found:
        where = f" inside {within!r}" if within else ""
        raise RewardModelError(f"no attention projection ({', '.join(names)}){where} found for LoRA; "
                               "pass target_modules (comma-separated layer names) in [model].params")
    return found


def apply_lora(model: nn.Module, targets: list[str], *, r: int, alpha: int, seed: int) -> Any:
    """Freeze ``model`` and wrap it with LoRA adapters on ``targets`` (seeded, global RNG restored)."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def parse_targets(target_modules: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in target_modules.split(",") if t.strip()) or QUERY_VALUE


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last attended token (right or left padding alike)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    index = (positions * mask.long()).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def load_pretrained(loader: Any, path: str | Path, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` from a local folder only, with a one-line error naming it."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised head" notices: the head is meant to be new
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loader.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot load a Hugging Face {what}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def from_saved_config(auto_class: Any, directory: Path) -> Any:
    """A model of the saved base config with placeholder weights (the reward model's weights follow)."""
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig, directory / BASE_DIR, "config")
    return auto_class.from_config(config)
