"""Warm start: a short supervised pass makes answers correct more often, and is cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.builders import build_sft_examples
from server.errors import WarmStartError
from server.vlm import WarmStartConfig, build_small_vlm, generate_answers, gold_hit_rate, load_vlm, warm_start

pytestmark = pytest.mark.slow


def test_warm_start_improves_gold_answers_and_is_cached(tmp_path: Path) -> None:
    base = build_small_vlm(tmp_path / "base", seed=0)
    examples = build_sft_examples(300, seed=0)
    held_out = [p for p, _ in build_sft_examples(60, split="test", seed=1) if p.domain == "general"]
    config = WarmStartConfig(steps=80, warmup_steps=8)

    before_vlm = load_vlm(base, device="cpu")
    before = gold_hit_rate(held_out, generate_answers(before_vlm.model, before_vlm.processor, held_out))

    first = warm_start(base, examples, out_dir=tmp_path / "warm", config=config, show_progress=False)
    assert not first.cached and len(first.losses) == 80
    assert sum(first.losses[-10:]) / 10 < 0.5 * first.losses[0]

    after_vlm = load_vlm(first.path, device="cpu")
    after = gold_hit_rate(held_out, generate_answers(after_vlm.model, after_vlm.processor, held_out))
    assert before <= 0.05 and after >= before + 0.3, (before, after)
    sampled = generate_answers(after_vlm.model, after_vlm.processor, held_out, do_sample=True, seed=0)
    assert len(set(sampled)) > len(sampled) // 3, "answers should vary before alignment"

    second = warm_start(base, examples, out_dir=tmp_path / "warm", config=config, show_progress=False)
    assert second.cached and second.path == first.path and second.seconds < 5
    assert second.losses == first.losses

    other = warm_start(base, examples[:50], out_dir=tmp_path / "warm", config=WarmStartConfig(steps=2))
    assert not other.cached and other.path != first.path


def test_warm_start_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(WarmStartError, match="at least one"):
        warm_start(tmp_path, [], out_dir=tmp_path / "out")
    with pytest.raises(WarmStartError, match="no such checkpoint"):
        warm_start(tmp_path / "absent", build_sft_examples(1), out_dir=tmp_path / "out")
    with pytest.raises(WarmStartError, match="learning_rate"):
        WarmStartConfig(learning_rate=0.0)
    with pytest.raises(WarmStartError, match="steps"):
        WarmStartConfig(steps=0)


def test_checkpoint_digests_are_remembered_but_an_edited_checkpoint_misses_the_cache(tmp_path: Path) -> None:
    """The cache key must follow the checkpoint's bytes even though its digests are memoised by size and mtime."""
    import json
    import os

    from server.vlm.warmstart import _cache_key

    base = build_small_vlm(tmp_path / "base", seed=0)
    examples = build_sft_examples(4, seed=0)
    config = WarmStartConfig(steps=2)
    key = _cache_key(base, examples, config, tmp_path / "warm")
    memo = json.loads((tmp_path / "warm" / "file-digests.json").read_text())
    assert str((base / "config.json").resolve()) in memo
    assert _cache_key(base, examples, config, tmp_path / "warm") == key  # from the memo
    assert _cache_key(base, examples, config, tmp_path / "fresh") == key  # and hashed afresh: same key

    config_file = base / "config.json"
    stat = config_file.stat()
    config_file.write_text(config_file.read_text().replace("{", "{ ", 1))  # same meaning, other bytes
    assert _cache_key(base, examples, config, tmp_path / "warm") != key
    (tmp_path / "warm" / "file-digests.json").write_text("not json")  # a broken memo is only a miss
    os.utime(config_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _cache_key(base, examples, config, tmp_path / "warm") != key
