"""The policy VLM: build a small one offline, load any local checkpoint, warm-start, generate."""

from server.vlm.build import SmallVLMSpec, build_small_vlm
from server.vlm.generate import encode_prompts, generate_answers, gold_hit_rate, prompt_text, user_messages
from server.vlm.load import LoadedVLM, default_device, load_processor, load_vlm
from server.vlm.processors import Qwen2VLImageOnlyProcessor
from server.vlm.tiny import build_tiny_idefics3, build_tiny_qwen2_5_vl, build_tiny_qwen2_vl
from server.vlm.tokenizer import chat_template, packaged_texts, train_tokenizer
from server.vlm.warmstart import WarmStartConfig, WarmStartResult, warm_start

__all__ = [
    "LoadedVLM",
    "Qwen2VLImageOnlyProcessor",
    "SmallVLMSpec",
    "WarmStartConfig",
    "WarmStartResult",
    "build_small_vlm",
    "build_tiny_idefics3",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_vl",
    "chat_template",
    "default_device",
    "encode_prompts",
    "generate_answers",
    "gold_hit_rate",
    "load_processor",
    "load_vlm",
    "packaged_texts",
    "prompt_text",
    "train_tokenizer",
    "user_messages",
    "warm_start",
]
