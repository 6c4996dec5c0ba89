"""``mor demo``: the whole system end to end on this machine (see ``sim/demo/run.py``).

    mor demo [--quick] [--policy FILE] [--out DIR] [--model PATH | --toy-model] [--seed N] [--cache DIR] [--overwrite]

Prints one line per phase and, at the end, where ``report.html`` is. Exit status 0 when every
check passed (audit verification, receipt reconciliation, clean stops, LoRA moved, KL finite,
ε within budget), 1 when the run completed but a check failed, 2 when it could not complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mor_cli.main import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the whole system end to end on this machine")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test size (1.7-2.4 min on 2 cores once the model is cached: docs/model.md)")
    parser.add_argument("--policy", type=Path, default=None,
                        help="consortium policy TOML (default: the built-in finance policy, ckks)")
    parser.add_argument("--out", type=Path, default=Path("mor-demo"), help="output folder (default ./mor-demo)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a local Hugging Face VLM checkpoint to align instead of the pretrained default")
    parser.add_argument("--toy-model", action="store_true",
                        help="align the 1.0M toy VLM (random weights) instead of the pretrained SmolLM2 VLM: "
                             "for fast tests; its answers are barely language")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the server's training")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where the built, warm-started VLM is cached (default: $MOR_CACHE_DIR, else "
                             "$XDG_CACHE_HOME/mor-secure, else ~/.cache/mor-secure)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous demo run in --out")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from policies import builtin_policy_path
    from sim.demo import DemoOptions, run_demo
    from sim.errors import SimError

    if args.model is not None and args.toy_model:
        raise CommandError("--model and --toy-model: choose one policy model")
    policy = args.policy if args.policy is not None else builtin_policy_path("finance")
    options = DemoOptions(out=args.out, policy=policy, quick=args.quick, model=args.model,
                          toy_model=args.toy_model, seed=args.seed,
                          cache=args.cache, overwrite=args.overwrite)
    try:
        outcome = run_demo(options, say=lambda line: print(line, flush=True))
    except SimError as exc:
        raise CommandError(str(exc)) from None
    failed = [name for name, passed in outcome.results["checks"].items() if not passed]
    if failed:
        print(f"mor demo: checks FAILED: {', '.join(failed)} (details in {outcome.results_path})", file=sys.stderr)
    print(f"report: {outcome.report_path}", flush=True)
    return 0 if not failed else 1
