"""Can this checkpoint be aligned here, and how? Answered before any training starts.

Why a check up front: a family whose processor cannot run without torchvision, an unknown
``model_type``, a LoRA pattern that matches nothing, ``float16`` on a CPU or an attention
implementation that is not installed all used to surface deep inside TRL, after the
federated calibration and router rounds had been paid for. :func:`check_trainable` reads
``config.json``, builds the model skeleton on the ``meta`` device (no weights, no memory),
loads the processor and renders one image prompt, so each of these fails in a second with a
message that names the checkpoint and the setting.

LoRA targets, when not given, are detected per family: the attention projections
(``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) of the *language* model only, never of the
vision tower. The language model sits under ``language_model`` in LLaVA, Qwen2-VL,
Qwen2.5-VL, Gemma 3, Mistral 3 and most others, under ``text_model`` in Idefics3 / SmolVLM;
any other family is resolved through ``get_decoder()``. Whatever is chosen must match at
least one linear layer of the skeleton, or it is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from server.errors import VLMLoadError

DType = Literal["float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
ATTENTION_PROJECTIONS = r"(q_proj|k_proj|v_proj|o_proj)"
LANGUAGE_MODEL_ATTENTION = rf".*language_model.*\.{ATTENTION_PROJECTIONS}"
TEXT_MODEL_ATTENTION = rf".*text_model.*\.{ATTENTION_PROJECTIONS}"
LORA_TARGETS_BY_FAMILY: dict[str, str] = {
    "llava": LANGUAGE_MODEL_ATTENTION,
    "llava_next": LANGUAGE_MODEL_ATTENTION,
    "llava_onevision": LANGUAGE_MODEL_ATTENTION,
    "qwen2_vl": LANGUAGE_MODEL_ATTENTION,
    "qwen2_5_vl": LANGUAGE_MODEL_ATTENTION,
    "qwen3_vl": LANGUAGE_MODEL_ATTENTION,
    "gemma3": LANGUAGE_MODEL_ATTENTION,
    "mistral3": LANGUAGE_MODEL_ATTENTION,
    "idefics3": TEXT_MODEL_ATTENTION,
    "smolvlm": TEXT_MODEL_ATTENTION,
}
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TrainPlan:
    """What GRPO will use for one checkpoint: resolved device, dtype, attention and LoRA targets."""

    model_type: str
    device: str
    dtype: DType
    attn_implementation: str | None
    lora_targets: str | list[str] | None
    lora_modules: int  # linear layers the LoRA targets matched (0 without LoRA)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]


def read_model_type(path: Path) -> str:
    """``model_type`` from ``path/config.json``; VLMLoadError naming the file otherwise."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise VLMLoadError(f"{path}: not a model checkpoint (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VLMLoadError(f"{config_file}: unreadable: {exc}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str):
        raise VLMLoadError(f"{config_file}: key 'model_type' missing or not a string")
    return model_type


def resolve_device(device: str) -> str:
    """``auto`` -> the GPU when present; ``cuda`` without one is refused (pick a GPU with CUDA_VISIBLE_DEVICES)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise VLMLoadError("device = 'cuda' but torch sees no CUDA device (use 'auto' or 'cpu')")
    if device not in ("cpu", "cuda"):
        raise VLMLoadError(f"device = {device!r}: expected 'auto', 'cpu' or 'cuda'")
    return device


def _check_dtype(dtype: str, device: str, use_lora: bool) -> None:
    if dtype not in _TORCH_DTYPES:
        raise VLMLoadError(f"dtype = {dtype!r}: expected one of {sorted(_TORCH_DTYPES)}")
    if dtype == "float16" and device != "cuda":
        raise VLMLoadError("dtype = 'float16' needs a CUDA device (fp16 mixed precision); use bfloat16 or float32")
    if dtype == "float16" and not use_lora:
        raise VLMLoadError("dtype = 'float16' trains only LoRA adapters (kept in fp32); full fp16 training "
                           "cannot be loss-scaled: set use_lora = true or use bfloat16")
    if dtype == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise VLMLoadError("dtype = 'bfloat16' but this GPU has no bf16 support: use float16 or float32")


def skeleton(path: Path, attn_implementation: str | None = None) -> Any:
    """The model's module tree on the meta device (no weights read); refuses non image-text families."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    model_type = read_model_type(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise VLMLoadError(f"{path}: model_type {model_type!r}: transformers cannot read its config: {exc}") from None
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(config, **kwargs)
    except (ValueError, ImportError, KeyError, TypeError) as exc:
        what = f"with attn_implementation = {attn_implementation!r}" if attn_implementation \
            else "as an image-text model"
        raise VLMLoadError(f"{path}: model_type {model_type!r} cannot be built {what}: {exc}") from None


def default_lora_targets(model: Any, model_type: str) -> str:
    """The per-family pattern, or the attention projections under ``get_decoder()`` for other families."""
    if model_type in LORA_TARGETS_BY_FAMILY:
        return LORA_TARGETS_BY_FAMILY[model_type]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((name for name, module in model.named_modules() if module is decoder and name), None)
    if prefix is None:
        raise VLMLoadError(f"model_type {model_type!r}: no language model found to put LoRA on; "
                           "set lora_target_modules in training.toml")
    return rf"{re.escape(prefix)}\..*\.{ATTENTION_PROJECTIONS}"


def matching_linear_layers(model: Any, targets: str | list[str]) -> list[str]:
    """Names of the linear layers PEFT would wrap for ``targets`` (full-match regex, or name suffixes)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if isinstance(targets, str):
        return [n for n in names if re.fullmatch(targets, n)]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def _check_processor(path: Path) -> None:
    from server.vlm.generate import prompt_text
    from server.vlm.load import load_processor

    processor = load_processor(path)
    try:
        text = prompt_text(processor, "What is shown?")
        encoded = processor(images=[Image.new("RGB", (64, 64), "gray")], text=[text], return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - any failure here means the family cannot be fed images
        raise VLMLoadError(
            f"{path}: the processor cannot render an image prompt: {type(exc).__name__}: {exc}") from None
    if "pixel_values" not in encoded:
        raise VLMLoadError(f"{path}: the processor produced no pixel_values for an image prompt")


def check_trainable(path: Path, *, dtype: str = "float32", device: str = "auto",
                    attn_implementation: str | None = None, lora_targets: str | list[str] | None = None,
                    use_lora: bool = True) -> TrainPlan:
    """Refuse, with a clear VLMLoadError, a checkpoint or setting GRPO cannot use; else the resolved plan."""
    path = Path(path)
    if not path.is_dir():
        raise VLMLoadError(f"{path}: no such checkpoint directory")
    model_type = read_model_type(path)
    resolved = resolve_device(device)
    _check_dtype(dtype, resolved, use_lora)
    model = skeleton(path, attn_implementation)
    _check_processor(path)
    targets: str | list[str] | None = None
    matched: list[str] = []
    if use_lora:
        targets = lora_targets if lora_targets else default_lora_targets(model, model_type)
        matched = matching_linear_layers(model, targets)
        if not matched:
            sample = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:6]
            raise VLMLoadError(f"{path}: lora_target_modules {targets!r} match no linear layer of {model_type!r} "
                               f"(some of its layers: {sample})")
    return TrainPlan(model_type=model_type, device=resolved, dtype=dtype,  # type: ignore[arg-type]
                     attn_implementation=attn_implementation, lora_targets=targets, lora_modules=len(matched))
