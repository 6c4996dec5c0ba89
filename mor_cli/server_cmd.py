"""``mor server``: run the aggregation server.

    mor server serve --config server.toml                          the HTTP API alone
    mor server serve --config server.toml --training training.toml  ... and the rounds of remote trainers
    mor server train --config training.toml                         one trainer rank (or N: accelerate launch)
    mor server run   --config server.toml --training training.toml  the API and the training run in one process
    mor server public-digests --training training.toml              what a fused-only policy publishes

Both stop gracefully on SIGTERM/SIGINT (open long-polls released at once, final signed audit
checkpoint, exit 0); ``run`` first lets the GRPO step in flight finish and checkpoints it, and
records ``training.stopped`` with that step: the next ``run`` resumes there (see ``server/runner.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mor_cli.main import CommandError
from mor_cli.server_state_cmd import add_state_actions
from mor_cli.site_keys import add_site_key_actions

AddArguments = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="server TOML (see server/config.py)")
    parser.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    parser.add_argument("--log-format", default=None, choices=["text", "json"],
                        help="log lines as text or one JSON object per line (default: [observability].log_format)")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--training", help="training TOML: run its stages here and serve `mor server train` ranks")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training TOML with [training] and [trainer] tables")
    parser.add_argument("--log-level", default="warning", choices=LOG_LEVELS)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--training", required=True, help="training TOML with a [training] table (server/trainer.py)")
    parser.add_argument("--keep-serving", action="store_true",
                        help="keep the API up after training finishes, until SIGTERM/SIGINT (default: exit)")


def _guarded(action: Callable[[], None], log_level: str, log_format: str | None = None) -> int:
    """Run ``action``; every expected failure becomes one CommandError line (exit 2)."""
    from server.errors import ServerError
    from server.observability.logs import configure_logging

    configure_logging(log_level, log_format)
    try:
        action()
    except ServerError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _serve(args: argparse.Namespace) -> int:
    from server.runner import serve

    return _guarded(lambda: serve(args.config, log_level=args.log_level, training_path=args.training), args.log_level,
                    args.log_format)


def _train(args: argparse.Namespace) -> int:
    from server.remote_trainer import train

    def run_rank() -> None:
        train(args.config)

    return _guarded(run_rank, args.log_level)


def _run(args: argparse.Namespace) -> int:
    from server.runner import run

    return _guarded(lambda: run(args.config, args.training, log_level=args.log_level,
                                keep_serving=args.keep_serving), args.log_level, args.log_format)


def _digest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--training", required=True, help="the training TOML the server will run with")


def _public_digests(args: argparse.Namespace) -> int:
    """Print the [privacy] line a fused-only policy needs so members and the key holder open these rounds only."""
    from server.trainer import load_training_config
    from server.training_data import public_round_digests

    def show() -> None:
        config = load_training_config(args.training)
        digests = public_round_digests(config.data, n_calibration=config.n_calibration,
                                       n_public_pairs=config.n_public_pairs, seed=config.seed)
        for kind, digest in digests.items():
            print(f"# {kind} round: {digest}")
        print("public_round_digests = [" + ", ".join(f'"{d}"' for d in digests.values()) + "]")

    return _guarded(show, "warning")


ACTIONS: dict[str, tuple[str, AddArguments, Handler]] = {
    "serve": ("serve the HTTP API over mutual TLS", _serve_arguments, _serve),
    "train": ("run a GRPO trainer rank against the service (accelerate launch for several)", _train_arguments,
              _train),
    "run": ("serve the API and run the training run in one process", _run_arguments, _run),
    "public-digests": ("print privacy.public_round_digests for a training setup (fused-only)", _digest_arguments,
                       _public_digests),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("server", help="aggregation server")
    actions = parser.add_subparsers(dest="server_action", required=True, metavar="ACTION")
    for name, (help_text, add_arguments, _handler) in ACTIONS.items():
        add_arguments(actions.add_parser(name, help=help_text))
    add_site_key_actions(actions, "server")
    add_state_actions(actions)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    return ACTIONS[args.server_action][2](args)
