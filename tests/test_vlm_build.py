"""The offline VLM: builds, reloads through the Auto classes, templates and pads as generation needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from corpus.prompts import build_prompts
from server.errors import VLMBuildError, VLMLoadError
from server.vlm import (
    Qwen2VLImageOnlyProcessor,
    build_small_vlm,
    build_tiny_qwen2_vl,
    encode_prompts,
    generate_answers,
    gold_hit_rate,
    load_vlm,
    packaged_texts,
    train_tokenizer,
)
from server.vlm.tokenizer import LLAVA_IMAGE, QWEN_IMAGE


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_vlm(tmp_path_factory.mktemp("vlm") / "llava", seed=0)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "qwen2vl", seed=0, texts=packaged_texts()[:4000])


def _image(color: str) -> Image.Image:
    return Image.new("RGB", (64, 64), color)


def test_small_vlm_reloads_through_auto_classes(llava_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(llava_dir)
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 < n_params < 5_000_000
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_same_seed_same_weights(llava_dir: Path, tmp_path: Path) -> None:
    again = build_small_vlm(tmp_path / "again", seed=0)
    assert (again / "tokenizer.json").read_bytes() == (llava_dir / "tokenizer.json").read_bytes()
    assert (again / "model.safetensors").read_bytes() == (llava_dir / "model.safetensors").read_bytes()


def test_build_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(VLMBuildError, match="non-empty"):
        build_small_vlm(tmp_path, texts=["a few words"])
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_chat_template_one_placeholder_per_image(llava_dir: Path) -> None:
    processor = load_vlm(llava_dir).processor
    as_string = [{"role": "user", "content": "Describe the image."}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Compare"},
                {"type": "image"},
                {"type": "text", "text": " these."},
            ],
        }
    ]
    text = processor.apply_chat_template(as_string, add_generation_prompt=True, tokenize=False)
    assert LLAVA_IMAGE not in text and text.endswith("<|im_start|>assistant\n")
    text = processor.apply_chat_template(as_parts, add_generation_prompt=True, tokenize=False)
    assert text.count(LLAVA_IMAGE) == 2 and "Compare" in text and " these." in text
    # The placeholder is one special token and expands to one slot per vision patch (8x8 patches of 8px).
    image_id = processor.tokenizer.convert_tokens_to_ids(LLAVA_IMAGE)
    assert processor.tokenizer.encode(LLAVA_IMAGE, add_special_tokens=False) == [image_id]
    enc = processor(images=[_image("red"), _image("blue")], text=[text], return_tensors="pt")
    assert int((enc["input_ids"] == image_id).sum()) == 2 * 64


def test_tokenizer_round_trips_any_text() -> None:
    tokenizer = train_tokenizer(["what color is the shape", "the price was $12.50"], vocab_size=300)
    for text in ("Zürich ✓ 価格 -3.5e+2 \t<imag", "", "<|im_end|> inside"):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_left_padding_keeps_batched_generation_identical(llava_dir: Path) -> None:
    vlm = load_vlm(llava_dir, device="cpu")
    prompts = build_prompts(2, domain="finance", seed=3) + build_prompts(1, domain="general", seed=3)
    batch = encode_prompts(vlm.processor, prompts)
    pad = vlm.processor.tokenizer.pad_token_id
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.min() < lengths.max(), "prompts must differ in length for this test"
    assert (batch["input_ids"][:, -1] != pad).all()  # every prompt ends at the right edge
    assert (batch["input_ids"][lengths.argmin(), 0] == pad).item()
    together = generate_answers(vlm.model, vlm.processor, prompts, max_new_tokens=6, batch_size=3)
    alone = [generate_answers(vlm.model, vlm.processor, [p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone


def test_qwen2_vl_checkpoint_loads_and_generates(qwen_dir: Path) -> None:
    # The trap this guards: without torchvision AutoProcessor only finds the tokenizer.
    assert not hasattr(AutoProcessor.from_pretrained(qwen_dir), "image_processor")
    vlm = load_vlm(qwen_dir, device="cpu")
    assert isinstance(vlm.processor, Qwen2VLImageOnlyProcessor)
    assert type(vlm.model).__name__ == "Qwen2VLForConditionalGeneration"
    prompts = build_prompts(2, domain="general", seed=1)
    enc = encode_prompts(vlm.processor, prompts)
    image_id = vlm.processor.tokenizer.convert_tokens_to_ids(QWEN_IMAGE)
    assert ((enc["input_ids"] == image_id).sum(dim=1) == 16).all()  # 8x8 patches merged 2x2
    answers = generate_answers(vlm.model, vlm.processor, prompts, max_new_tokens=5, do_sample=True, seed=0)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_load_vlm_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(VLMLoadError, match="no such checkpoint"):
        load_vlm(tmp_path / "absent")
    with pytest.raises(VLMLoadError, match="no config.json"):
        load_vlm(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(VLMLoadError, match="config.json: unreadable"):
        load_vlm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(VLMLoadError, match="'model_type' missing"):
        load_vlm(tmp_path)


def test_gold_hit_rate_matches_whole_words() -> None:
    prompts = build_prompts(40, domain="general", seed=0)
    prompt = next(p for p in prompts if p.gold == "no")
    assert gold_hit_rate([prompt], ["No. It is a circle."]) == 1.0
    assert gold_hit_rate([prompt], ["There is nothing notable."]) == 0.0


def test_generation_is_seeded(llava_dir: Path) -> None:
    vlm = load_vlm(llava_dir, device="cpu")
    prompts = build_prompts(2, domain="medical", seed=0)
    first = generate_answers(vlm.model, vlm.processor, prompts, max_new_tokens=6, do_sample=True, seed=7)
    second = generate_answers(vlm.model, vlm.processor, prompts, max_new_tokens=6, do_sample=True, seed=7)
    assert first == second
    assert torch.is_grad_enabled()  # generation does not leak no_grad into the caller
