"""``mor eval [--seeds 3] [--steps N] [--quick|--smoke] [--methods A,B] [--model PATH|--toy-model] [--out DIR]``.

The policy is the pretrained SmolLM2-135M VLM of ``mor demo`` unless ``--model`` or ``--toy-model``
says otherwise; on 2 CPU cores a full run on it takes hours (a GPU box is where it belongs).

The Mixture-of-Rewards comparison. Writes ``DIR/eval.md`` (tables with 95% confidence intervals),
``DIR/eval.json`` (every number) and ``DIR/*.png``; the reference model and GRPO adapters stay
under ``DIR/work`` (the warm start is cached there). Every finished (method, seed) cell is saved
under ``DIR/cells`` at once, so rerunning the same command resumes an interrupted run.
``mor eval --robustness [--quick]`` instead prints the degradation curve of ``docs/robustness.md``
(how far one malicious member moves the fused reward; no training, under a minute).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from mor_cli.errors import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("eval", help="compare MoR with single-client, uniform, FedAvg and central rewards")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1); default 3")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per method (same for all)")
    parser.add_argument("--quick", action="store_true", help="smaller data and budget (minutes, noisier)")
    parser.add_argument("--smoke", action="store_true", help="tiny run that only shows the pipeline works")
    parser.add_argument("--methods", default=None, help="comma-separated rows to run (default: all)")
    parser.add_argument("--model", type=Path, default=None,
                        help="base VLM checkpoint for the policy (e.g. from `mor model build`); default: the "
                             "pretrained SmolLM2-135M VLM the demo uses (built once into the model cache)")
    parser.add_argument("--toy-model", action="store_true",
                        help="the 1.0M random-weight toy VLM instead (fast; what the tests and the earlier tables use)")
    parser.add_argument("--secure-dp", action="store_true",
                        help="members train with CSPRNG noise, unseeded, as in production (default: seeded pilot)")
    parser.add_argument("--epsilon", type=float, default=None, help="members' DP epsilon (default 8)")
    parser.add_argument("--lr", type=float, default=None,
                        help="GRPO learning rate of the policy's LoRA, the same for every row (default 2e-3)")
    parser.add_argument("--beta", type=float, default=None,
                        help="GRPO KL coefficient to the reference, the same for every row (default 0.04)")
    parser.add_argument("--heldout-domain", default=None, help="domain left out of the *-heldout routers' fit")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap replicates (default 2000)")
    parser.add_argument("--out", type=Path, default=Path("eval-out"), help="output folder (default: eval-out)")
    parser.add_argument("--robustness", action="store_true",
                        help="instead: how far one malicious member moves the fused reward (docs/robustness.md)")
    parser.set_defaults(func=handle)


def _default_base() -> Path:
    """The pretrained VLM ``mor demo`` aligns, assembled (not warm-started) in the model cache."""
    from sim.demo.policy_model import pretrained_base
    from sim.demo.run import default_cache
    from sim.errors import SimError

    try:
        return pretrained_base(default_cache(), say=lambda line: print(line, file=sys.stderr, flush=True))
    except SimError as exc:
        raise CommandError(str(exc)) from None


def handle(args: argparse.Namespace) -> int:
    if args.robustness:
        from sim.eval.robustness import main

        return main(["--quick"] if args.quick else [])
    import transformers

    from sim.eval import EvalConfig, EvalError, run_eval, write_report

    if args.seeds < 1:
        raise CommandError(f"--seeds must be >= 1, got {args.seeds}")
    if args.quick and args.smoke:
        raise CommandError("--quick and --smoke are two presets: choose one")
    if args.toy_model and args.model is not None:
        raise CommandError("--model and --toy-model: choose one policy model")
    config = EvalConfig.smoke() if args.smoke else EvalConfig.quick() if args.quick else EvalConfig.full()
    changes: dict[str, Any] = {"seeds": tuple(range(args.seeds)), "secure_dp": args.secure_dp}
    optional = {"grpo_steps": args.steps, "epsilon": args.epsilon, "heldout_domain": args.heldout_domain,
                "learning_rate": args.lr, "beta": args.beta,
                "bootstrap": args.bootstrap, "model_path": str(args.model.resolve()) if args.model else None}
    changes.update({k: v for k, v in optional.items() if v is not None})
    if args.methods is not None:
        changes["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    transformers.logging.set_verbosity_error()  # checkpoint-loading reports would bury the progress lines
    try:
        if args.model is None and not args.toy_model:
            changes["model_path"] = str(_default_base())
        config = config.replace(**changes)
        result = run_eval(config, args.out, echo=lambda line: print(line, file=sys.stderr, flush=True))
        command = "mor eval " + shlex.join(a for a in sys.argv[2:]) if sys.argv[1:2] == ["eval"] else "mor eval"
        paths = write_report(result.to_dict(), args.out, command=command)
    except EvalError as exc:
        raise CommandError(str(exc)) from None
    print((args.out / "eval.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
