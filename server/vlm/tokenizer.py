"""A byte-level BPE tokenizer and chat template for VLMs built offline.

Why train one: no small tokenizer ships inside a PyPI package we depend on, and nothing may
be downloaded. Byte-level BPE encodes *any* string (every byte is in the alphabet), so model
generations, odd Unicode and numbers never hit an unknown token. The image placeholder is a
*special* token: as an ordinary string BPE would split it into pieces and the processor
would silently find no image slot.

The chat template accepts both shapes callers use: ``content`` as a plain string, and
``content`` as a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts (TRL
passes lists). Each image part renders exactly one placeholder; the processor later expands
it to the number of vision tokens. Padding is on the left so batched generation continues
right after each prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from server.errors import VLMBuildError

TemplateStyle = Literal["llava", "qwen2_vl", "idefics3"]

BOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
LLAVA_IMAGE = "<image>"
QWEN_VISION_START = "<|vision_start|>"
QWEN_VISION_END = "<|vision_end|>"
QWEN_IMAGE = "<|image_pad|>"
QWEN_VIDEO = "<|video_pad|>"
IDEFICS_IMAGE = "<image>"
IDEFICS_FAKE = "<fake_token_around_image>"
IDEFICS_GLOBAL = "<global-img>"
IDEFICS_END = "<end_of_utterance>"

_IMAGE_MARKUP: dict[str, str] = {
    "llava": LLAVA_IMAGE,
    "qwen2_vl": QWEN_VISION_START + QWEN_IMAGE + QWEN_VISION_END,
    "idefics3": IDEFICS_IMAGE,
}

_STYLE_SPECIALS: dict[str, list[str]] = {
    "llava": [LLAVA_IMAGE],
    "qwen2_vl": [QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE, QWEN_VIDEO],
    "idefics3": [IDEFICS_FAKE, IDEFICS_IMAGE, IDEFICS_GLOBAL, IDEFICS_END],
}


def chat_template(style: TemplateStyle) -> str:
    """The ChatML-style Jinja template; one image markup per image part, nothing else."""
    image = _IMAGE_MARKUP[style]
    return (
        "{% for message in messages %}"
        "{{ '" + IM_START + "' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '" + IM_END + "\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\\n' }}{% endif %}"
    )


def train_tokenizer(
    texts: Iterable[str], *, style: TemplateStyle = "llava", vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Deterministic for the same texts (BPE training has no randomness), so a rebuilt model
    directory gets the same token ids.
    """
    if style not in _IMAGE_MARKUP:
        raise VLMBuildError(f"unknown template style {style!r}; expected one of {sorted(_IMAGE_MARKUP)}")
    if vocab_size < 300:
        raise VLMBuildError(f"vocab_size={vocab_size} is below the 256-byte alphabet plus special tokens")
    specials = [BOS, PAD, IM_START, IM_END, *_STYLE_SPECIALS[style]]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    extra: dict[str, str] = {"image_token": LLAVA_IMAGE} if style in ("llava", "idefics3") else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        padding_side="left",
        extra_special_tokens=extra or None,
        model_max_length=1024,
    )
    tokenizer.chat_template = chat_template(style)
    for token in specials:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:  # the trap this module exists to avoid
            raise VLMBuildError(f"special token {token!r} encodes to {len(ids)} ids, expected 1")
    return tokenizer


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The single id of a special token (refuses tokens that are not exactly one id)."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise VLMBuildError(f"token {token!r} is not one known token id")
    return found


def packaged_texts() -> list[str]:
    """English text that ships inside installed packages: the easy-vqa questions and answers."""
    import easy_vqa

    texts: list[str] = list(easy_vqa.get_answers())
    for questions, answers, _ in (easy_vqa.get_train_questions(), easy_vqa.get_test_questions()):
        texts.extend(questions)
        texts.extend(answers)
    return texts
