"""``mor model build / info / warmstart`` on a tiny stand-in for SmolLM2 (the real one takes minutes on 2 cores).

The assembly, the info check and the warm start are the code paths the pretrained default uses;
only the language model is a tiny Llama saved the way :func:`convert_smollm2` saves SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlamaForCausalLM

from corpus.builders import build_sft_examples
from corpus.store import save_pairs
from corpus.types import PreferencePair
from mor_cli.main import main
from server.vlm import generate_answers, load_vlm, packaged_texts, train_tokenizer
from server.vlm.pretrained import TowerSpec, build_pretrained_vlm, gguf_path
from server.vlm.warmstart import WarmStartConfig, warm_start

pytestmark = pytest.mark.slow
TOWER = TowerSpec(image_size=32, patch_size=8, hidden=32, layers=1, heads=2)  # 16 patches -> 4 image tokens


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "tiny-llama"
    tokenizer = train_tokenizer(packaged_texts()[:3000], style="llava", vocab_size=600)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def built(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pretrained_vlm(tmp_path_factory.mktemp("vlm") / "base", lm_dir=tiny_lm, tower=TOWER)


def test_build_keeps_the_pretrained_language_model_and_reloads_as_idefics3(tiny_lm: Path, built: Path) -> None:
    processor = AutoProcessor.from_pretrained(built)
    model = AutoModelForImageTextToText.from_pretrained(built)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration" and processor.image_seq_len == 4
    config = json.loads((built / "config.json").read_text())
    assert "quantization_config" not in config and "quantization_config" not in config["text_config"]
    original = load_file(str(tiny_lm / "model.safetensors"))
    layer = "layers.1.self_attn.q_proj.weight"
    assert torch.equal(model.model.text_model.state_dict()[layer], original[f"model.{layer}"])
    vlm = load_vlm(built, device="cpu")
    answers = generate_answers(vlm.model, vlm.processor, [p for p, _ in build_sft_examples(2, seed=0)],
                               max_new_tokens=3)
    assert len(answers) == 2


def test_info_reports_family_and_grpo_readiness(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", str(built), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "idefics3" and info["image_tokens_per_image"] == 4
    assert info["lora_layers"] == 2 * 4 and "text_model" in info["default_lora_targets"]
    assert main(["model", "info", str(built.parent / "absent")]) == 2


def test_vision_warm_start_freezes_the_language_model_and_scores_held_out(built: Path, tmp_path: Path) -> None:
    examples = build_sft_examples(12, seed=0)
    config = WarmStartConfig(steps=3, batch_size=4, learning_rate=1e-2, warmup_steps=1, train="vision")
    result = warm_start(built, examples[:9], held_out=examples[9:], out_dir=tmp_path, config=config,
                        show_progress=False)
    before, after = load_file(str(built / "model.safetensors")), load_file(str(result.path / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("vision_model" in k or "connector" in k for k in changed)
    assert set(result.held_out) == {"loss_before", "loss_after"}
    assert all(v == v and v > 0 for v in result.held_out.values())  # finite, positive


def test_warmstart_command_on_an_imported_dataset_with_lora(built: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MOR_CACHE_DIR", str(tmp_path / "cache"))
    pairs = [PreferencePair(prompt=p, chosen=answer, rejected="no idea") for p, answer in build_sft_examples(10)]
    save_pairs(pairs, tmp_path / "data")
    argv = ["model", "warmstart", "--model", str(built), "--data", str(tmp_path / "data"), "--steps", "2",
            "--batch-size", "2", "--lora-r", "2", "--held-out", "0.3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out answer loss" in out and "pairs" in out
    warmed = next((tmp_path / "cache" / "warm").glob("warm-*"))
    assert not any("lora_" in k for k in load_file(str(warmed / "model.safetensors")))  # merged: a plain checkpoint
    assert main(argv) == 0 and "(cached)" in capsys.readouterr().out


def test_the_smollm2_gguf_is_installed() -> None:
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000


def test_build_defaults_to_the_folder_demo_and_eval_reuse(built: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`mor model build` with no --out must land where `mor demo` / `mor eval` look, or a user builds twice."""
    import shutil

    from mor_cli.model_cmd import default_base
    from sim.demo.run import default_cache

    monkeypatch.setenv("MOR_CACHE_DIR", str(tmp_path / "cache"))
    assert default_base().parent == default_cache() == tmp_path / "cache"
    monkeypatch.delenv("MOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = default_base()
    assert base == tmp_path / "xdg" / "mor-secure" / base.name == default_cache() / base.name
    shutil.copytree(built, default_base())
    assert main(["model", "build"]) == 0  # already there: said, not rebuilt, not an error
    assert "already built" in capsys.readouterr().out
    assert main(["model", "build", "--lm", str(tmp_path)]) == 2
    assert "--lm needs --out" in capsys.readouterr().err
