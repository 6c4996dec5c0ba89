"""Turn corpus prompts into model inputs and generate answers, for evaluation and warm start.

The message shape here (one user turn: an image part, then the question) is the one TRL
builds for GRPO from a ``prompt`` + ``image`` dataset, so what we evaluate is what we train.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from corpus.types import Prompt


def user_messages(question: str) -> list[dict[str, Any]]:
    """The conversation for one question about one image."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def prompt_text(processor: Any, question: str) -> str:
    """The rendered prompt, ending where the assistant's answer begins."""
    return str(processor.apply_chat_template(user_messages(question), add_generation_prompt=True, tokenize=False))


def encode_prompts(processor: Any, prompts: Sequence[Prompt]) -> Any:
    """A left-padded batch (``BatchFeature``) with every multimodal field the model needs."""
    texts = [prompt_text(processor, p.question) for p in prompts]
    return processor(images=[p.image for p in prompts], text=texts, return_tensors="pt", padding=True)


@torch.no_grad()
def generate_answers(
    model: Any,
    processor: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[str]:
    """One decoded answer per prompt (special tokens stripped), in order.

    ``seed`` makes sampling reproducible; greedy decoding ignores it.
    """
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", disable=None if show_progress else True, leave=False):
        batch = encode_prompts(processor, prompts[start : start + batch_size]).to(model.device)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        answers.extend(s.strip() for s in processor.batch_decode(new_tokens, skip_special_tokens=True))
    model.train(was_training)
    return answers


def gold_hit_rate(prompts: Sequence[Prompt], answers: Sequence[str]) -> float:
    """Fraction of answers that contain the prompt's gold answer as whole words (case-insensitive).

    Whole words, so "no" is not found inside "not" and "red" not inside "bored".
    """
    scored = [(p.gold, a) for p, a in zip(prompts, answers, strict=True) if p.gold]
    hits = sum(
        re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", answer, re.IGNORECASE) is not None for gold, answer in scored
    )
    return hits / len(scored) if scored else 0.0
