"""Processor variants needed where torchvision is absent.

Qwen2-VL's (and Qwen2.5-VL's) processor insists on a video processor, and its video processor needs
torchvision, which has no CPU wheel beside our pinned torch (README, Install notes). Processor
attributes are read from the ``__init__`` signature, so a subclass whose signature has no
``video_processor`` is an image-only Qwen2-VL processor: same image handling, same token
expansion, and it saves and reloads through ``from_pretrained`` like the original.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video sub-processor (images and text only)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):  # noqa: N801 (the transformers class name)
    """``Qwen2_5_VLProcessor`` without the video sub-processor (images and text only)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)
