"""Warm start: a short supervised pass so the policy's answers are plausible before GRPO.

Why: GRPO learns from differences *within* a group of sampled answers. A randomly
initialised model emits byte noise, every answer scores the same, and the advantages are all
zero. A few hundred supervised steps on good answers give fluent, varied answers that the
client reward models can actually tell apart.

Only answer tokens (and the end-of-turn token) are supervised; prompt and image tokens are
masked. Each example is encoded exactly as generation sees it (rendered prompt through the
processor, then the answer's token ids appended), so there is no train/generate mismatch.

For a pretrained language model (``train = "vision"``) only the vision tower and connector
learn, plus optional LoRA on the language model's attention (``lora_r > 0``), merged into the
weights before saving so the result is still an ordinary checkpoint: a full pass at these
learning rates would overwrite what the language model knows. ``held_out`` examples are
scored (mean answer-token loss) before and after, so a user sees whether it generalised.

Results are cached: the output directory name is a hash of the base checkpoint's files, the
settings and the examples, and a finished run writes ``warm_start.json`` last, so a second
call with the same inputs returns at once and a crashed run is never mistaken for a result.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from corpus.types import Prompt
from server.errors import WarmStartError
from server.vlm.generate import prompt_text
from server.vlm.load import load_vlm

MARKER = "warm_start.json"
IGNORE_INDEX = -100
_PER_TOKEN_KEYS = ("attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class WarmStartConfig:
    """Settings of the supervised pass. ``default()`` fits ~2 min on 2 CPU cores, ``quick()`` ~20 s."""

    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    train: Literal["all", "vision"] = "all"  # "vision": tower + connector only, the language model frozen
    lora_r: int = 0  # > 0: LoRA on the language model's attention, merged before saving

    @classmethod
    def default(cls) -> WarmStartConfig:
        return cls()

    @classmethod
    def quick(cls) -> WarmStartConfig:
        return cls(steps=120, warmup_steps=10)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise WarmStartError(f"WarmStartConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.train not in ("all", "vision") or self.lora_r < 0:
            raise WarmStartError(f"WarmStartConfig: train={self.train!r} / lora_r={self.lora_r} not understood")
        if not (0 < self.learning_rate < 1):
            raise WarmStartError(f"WarmStartConfig.learning_rate must be in (0, 1), got {self.learning_rate}")


@dataclass(frozen=True)
class WarmStartResult:
    """Where the warm-started checkpoint is, whether it came from the cache, and the loss curve."""

    path: Path
    cached: bool
    losses: list[float]
    seconds: float
    held_out: dict[str, float] = field(default_factory=dict)  # loss_before / loss_after on held-out examples


def _file_sha256(file: Path, known: dict[str, Any]) -> bytes:
    """SHA-256 of one checkpoint file, taken from ``known`` when its (path, size, mtime) match.

    Re-hashing a 517 MB pretrained base on every cached run cost 13 s of a 5.5-minute demo. The
    memo only skips the read when the file's size and modification time are unchanged, so a
    rebuilt or edited checkpoint is hashed again. ``known`` is updated in place.
    """
    stat = file.stat()
    entry = known.get(str(file.resolve()))
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        try:
            return bytes.fromhex(str(entry["sha256"]))
        except ValueError:
            pass
    hasher = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            hasher.update(chunk)
    known[str(file.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hasher.hexdigest()}
    return hasher.digest()


def _cache_key(model_dir: Path, examples: Sequence[tuple[Prompt, str]], config: WarmStartConfig,
               memo_dir: Path) -> str:
    """The warm start's cache key; checkpoint digests are remembered in ``memo_dir`` (the user's
    cache beside the warm-started outputs, never inside the checkpoint), read and written once."""
    memo = memo_dir / "file-digests.json"
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    before = dict(known)
    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for file in sorted(model_dir.iterdir()):
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(_file_sha256(file, known))
    if known != before:
        memo_dir.mkdir(parents=True, exist_ok=True)
        scratch = memo.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(known, sort_keys=True), encoding="utf-8")
        scratch.replace(memo)
    for prompt, answer in examples:
        image = io.BytesIO()
        prompt.image.save(image, format="PNG")
        digest.update(json.dumps([prompt.prompt_id, prompt.question, answer]).encode())
        digest.update(hashlib.sha256(image.getvalue()).digest())
    return digest.hexdigest()


def _encode_example(processor: Any, prompt: Prompt, answer: str) -> dict[str, torch.Tensor]:
    """Prompt through the processor, answer ids appended; labels only on the answer."""
    enc = processor(images=[prompt.image], text=[prompt_text(processor, prompt.question)], return_tensors="pt")
    tok = processor.tokenizer
    answer_ids = torch.tensor([tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]])
    n_answer = answer_ids.shape[1]
    out: dict[str, torch.Tensor] = {key: value for key, value in enc.items() if key not in _PER_TOKEN_KEYS}
    out["input_ids"] = torch.cat([enc["input_ids"], answer_ids], dim=1)
    for key in _PER_TOKEN_KEYS:
        if key in enc:
            fill = 1 if key == "attention_mask" else 0
            out[key] = torch.cat([enc[key], torch.full((1, n_answer), fill, dtype=enc[key].dtype)], dim=1)
    prompt_len = enc["input_ids"].shape[1]
    out["labels"] = torch.cat([torch.full((1, prompt_len), IGNORE_INDEX), answer_ids], dim=1)
    return out


def _collate(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad per-token fields; concatenate image fields (their first dim is per image/patch)."""
    width = max(item["input_ids"].shape[1] for item in items)
    pad_value = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        if key in ("input_ids", "labels", *_PER_TOKEN_KEYS):
            rows = [
                torch.nn.functional.pad(item[key], (0, width - item[key].shape[1]), value=pad_value.get(key, 0))
                for item in items
            ]
            batch[key] = torch.cat(rows, dim=0)
        else:
            batch[key] = torch.cat([item[key] for item in items], dim=0)
    return batch


def _lr_factor(step: int, config: WarmStartConfig) -> float:
    """Linear warmup, then cosine decay to 10%."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def warm_start(
    model_dir: Path,
    examples: Sequence[tuple[Prompt, str]],
    *,
    out_dir: Path,
    config: WarmStartConfig | None = None,
    show_progress: bool = True,
    held_out: Sequence[tuple[Prompt, str]] = (),
    threads: Callable[[], int] | None = None,
) -> WarmStartResult:
    """Supervised pass of ``model_dir`` on (prompt, good answer) pairs; result under ``out_dir``.

    ``threads``, asked before every step, is how many torch threads the step may use: a caller
    that shares the cores with other work (the demo's DP trainers) passes 1 while that work runs.
    Two threads on cores another process keeps busy make each step several times slower than
    one, because every parallel operation waits for its descheduled half.

    Returns the cached result when ``out_dir`` already holds a finished run for the same
    checkpoint, settings and examples.
    """
    config = config or WarmStartConfig.default()
    model_dir = Path(model_dir)
    if not examples:
        raise WarmStartError("warm_start needs at least one (prompt, answer) example")
    if not model_dir.is_dir():
        raise WarmStartError(f"{model_dir}: no such checkpoint directory")
    started = time.perf_counter()
    key = _cache_key(model_dir, [*examples, *held_out], config, Path(out_dir))
    final = Path(out_dir) / f"warm-{key[:16]}"
    if (final / MARKER).is_file():
        record = json.loads((final / MARKER).read_text(encoding="utf-8"))
        return WarmStartResult(final, True, list(record["losses"]), time.perf_counter() - started,
                               dict(record.get("held_out") or {}))

    torch.manual_seed(config.seed)
    vlm = load_vlm(model_dir)
    model, processor = _trainable(vlm.model, config), vlm.processor
    encoded = [_encode_example(processor, p, a) for p, a in tqdm(examples, desc="encode",
                                                                          disable=None if show_progress else True)]
    held = [_encode_example(processor, p, a) for p, a in held_out]
    _use_threads(threads)
    scores = {"loss_before": _mean_loss(model, held, processor.tokenizer.pad_token_id)} if held else {}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    losses: list[float] = []
    progress = tqdm(range(config.steps), desc="warm start", disable=None if show_progress else True)
    for step in progress:
        _use_threads(threads)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * _lr_factor(step, config)
        picks = torch.randint(len(encoded), (config.batch_size,), generator=generator).tolist()
        batch = _collate([encoded[i] for i in picks], processor.tokenizer.pad_token_id)
        batch = {key: value.to(model.device) for key, value in batch.items()}
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise WarmStartError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.item()))
        progress.set_postfix(loss=f"{losses[-1]:.3f}")

    if held:
        scores["loss_after"] = _mean_loss(model, held, processor.tokenizer.pad_token_id)
    if config.lora_r > 0:
        model = model.merge_and_unload()  # an ordinary checkpoint again
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.eval()
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    record = {"base": str(model_dir), "key": key, "config": asdict(config), "examples": len(examples), "losses": losses,
              "held_out": scores, "held_out_examples": len(held)}
    (staging / MARKER).write_text(json.dumps(record), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return WarmStartResult(final, False, losses, time.perf_counter() - started, scores)


def _use_threads(threads: Callable[[], int] | None) -> None:
    if threads is not None and (wanted := max(1, threads())) != torch.get_num_threads():
        torch.set_num_threads(wanted)


_LANGUAGE_PARTS = ("language_model", "text_model", "lm_head")


def _trainable(model: Any, config: WarmStartConfig) -> Any:
    """Freeze what ``config.train`` keeps fixed; wrap the language model's attention in LoRA if asked."""
    if config.train == "vision":
        for name, param in model.named_parameters():
            param.requires_grad = not any(part in name for part in _LANGUAGE_PARTS)
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        from server.vlm.families import default_lora_targets

        targets = default_lora_targets(model, model.config.model_type)
        # modules_to_save keeps the tower/connector trainable inside the PEFT wrapper
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r,
                                                 target_modules=targets, lora_dropout=0.0))
        for name, param in model.named_parameters():
            if any(name.endswith(t) for t in trainable):
                param.requires_grad = True
    return model


@torch.no_grad()
def _mean_loss(model: Any, encoded: Sequence[dict[str, torch.Tensor]], pad_id: int, batch_size: int = 8) -> float:
    """Mean answer-token loss over ``encoded`` (teacher forcing), in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = {k: v.to(model.device) for k, v in _collate(chunk, pad_id).items()}
        total += float(model(**batch).loss) * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / max(count, 1)
