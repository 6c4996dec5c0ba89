"""``mor client``: a consortium member's agent.

    mor client init-config --out agent.toml [--server-url ... --model-param K=V ...]   write a config (template)
    mor client train --config agent.toml            DP-train the reward model, sign the privacy report
    mor client privacy-report --config agent.toml   print the verified privacy report
    mor client run --config agent.toml              enrol and serve scoring tasks until SIGTERM

Every failure the user can fix (config, files, keys, server refusals) is one line on stderr
and exit status 2; a clean shutdown (SIGTERM/SIGINT) exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mor_cli.main import CommandError
from mor_cli.site_keys import add_site_key_actions

# init-config options: flag -> (table, key, type)
_INIT_VALUES: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "server_url": ("agent", "server_url", str), "server_identity": ("agent", "server_identity", str),
    "server_cert_sha256": ("agent", "server_cert_sha256", str), "policy": ("agent", "policy", str),
    "data_dir": ("agent", "data_dir", str), "state_dir": ("agent", "state_dir", str),
    "cert": ("tls", "cert", str), "key": ("tls", "key", str), "ca": ("tls", "ca", str), "crl": ("tls", "crl", str),
    "arch": ("model", "arch", str), "epsilon": ("privacy", "epsilon", float), "delta": ("privacy", "delta", float),
}


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the project's error trees into one-line ``CommandError``s."""

    def run(args: argparse.Namespace) -> int:
        from audit.errors import AuditError, LogLockedError
        from client_agent.errors import ClientAgentError
        from corpus.errors import CorpusError
        from crypto.errors import CryptoError, IntegrityError
        from policies.errors import PolicyError

        try:
            return action(args)
        except LogLockedError as exc:
            raise CommandError(f"{exc} (is another `mor client` using this state_dir?)") from None
        except IntegrityError:
            raise CommandError("a signature or integrity check failed") from None
        except (ClientAgentError, CryptoError, AuditError, CorpusError, PolicyError) as exc:
            raise CommandError(str(exc)) from None

    return run


def _config(args: argparse.Namespace) -> Any:
    from client_agent.config import load_agent_config

    return load_agent_config(args.config)


def _init_config(args: argparse.Namespace) -> int:
    import tomllib

    from client_agent.config import AgentConfig, parse_agent_config, render_template

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CommandError(f"{out}: exists (use --force to overwrite)")
    values: dict[str, dict[str, Any]] = {}
    for flag, (table, key, kind) in _INIT_VALUES.items():
        if getattr(args, flag) is not None:
            values.setdefault(table, {})[key] = kind(getattr(args, flag))
    if args.insecure_pilot:
        values.setdefault("agent", {})["insecure_pilot"] = True
    if args.model_param:
        values.setdefault("model", {})["params"] = dict(_model_param(item) for item in args.model_param)
    text = render_template(values)
    missing = [f"[{table}].{key}" for table, field in AgentConfig.model_fields.items() if table != "source"
               for key, info in getattr(field.annotation, "model_fields", {}).items()
               if info.is_required() and key not in values.get(table, {})]
    if not missing:  # complete: validate before writing, so a written config always loads
        parse_agent_config(tomllib.loads(text), out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, "utf-8")
    print(f"wrote {out}" + (f"; fill in the required keys: {', '.join(missing)}" if missing else ""))
    return 0


def _model_param(item: str) -> tuple[str, int | float | bool | str]:
    """``KEY=VALUE`` with the value typed as TOML would type it (int, float, bool, else a string).

    Typed here rather than kept as text so ``hidden=256`` reaches the model factory as an int,
    exactly as if the member had written it into ``[model].params`` by hand.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise CommandError(f"--model-param {item!r}: expected KEY=VALUE with KEY a name (e.g. hidden=256)")
    raw = raw.strip()
    if raw in ("true", "false"):
        return key, raw == "true"
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def _train(args: argparse.Namespace) -> int:
    from audit import AuditLog
    from client_agent.budget_ledger import LifetimeLedger
    from client_agent.errors import LifetimeBudgetExceededError
    from client_agent.local_model import train_reward_model
    from crypto.signing import SigningKey

    config = _config(args)
    identity = config.identity()
    key = SigningKey.load_or_create(config.signing_key_path)
    with AuditLog.open(config.audit_dir, signing_key=key, origin=identity) as audit:
        ledger = LifetimeLedger.from_audit(audit, identity=identity, policy=config.consortium_policy())
        try:
            model, signed, result = train_reward_model(config, identity=identity, signing_key=key,
                                                       progress=not args.quiet, ledger=ledger)
        except LifetimeBudgetExceededError as exc:
            audit.append(actor=identity, action="training.refused", outcome="refused",
                         details={"reason": str(exc)[:1000], "runs": len(ledger.runs)})
            raise
        report = signed.report
        audit.append(actor=identity, action="model.trained",
                     digests={"model_digest": report.model_digest},
                     details={"epsilon": report.epsilon, "delta": report.delta, "steps": report.steps,
                              "dataset_size": report.dataset_size, "insecure_pilot": report.insecure_pilot,
                              "noise_source": report.noise_source,
                              "epsilon_independent": result.epsilon_independent})
        ledger.record(audit, signed)
    print(f"trained {model.arch} on {report.dataset_size} pairs: epsilon={report.epsilon:.4f} (independent check "
          f"{result.epsilon_independent:.4f}), delta={report.delta:g}, noise={report.noise_multiplier:.3f}, "
          f"steps={report.steps}, noise source: {report.noise_source}; model {config.model_dir}, "
          f"report {config.privacy_report_path}")
    print(f"lifetime epsilon {report.lifetime_epsilon:.4f} after {len(report.prior_runs) + 1} training(s)"
          + (f" of {ledger.limit}" if ledger.limit is not None else " (policy sets no lifetime_epsilon)"))
    return 0


def _privacy_report(args: argparse.Namespace) -> int:
    from client_agent.local_model import load_report
    from crypto.signing import SigningKey

    config = _config(args)
    key = SigningKey.load(config.signing_key_path)
    signed = load_report(config, key, identity=config.identity())
    if args.json:
        print(signed.to_json())
        return 0
    for name, value in signed.report.model_dump(mode="json").items():
        if name != "prior_runs":
            print(f"{name:20} {value}")
    print(f"{'signer':20} {signed.signer}  (signature verified)")
    _print_ledger(config, key)
    return 0


def _print_ledger(config: Any, key: Any) -> None:
    """The lifetime ledger as the agent's audit log has it now (read-only: a running agent may hold the log)."""
    from client_agent.budget_ledger import LifetimeLedger
    from policies.lifetime import composition_statement

    ledger = LifetimeLedger.read_verified(config.audit_dir, key.verify_key(), identity=config.identity(),
                                          policy=config.consortium_policy())
    total, used = ledger.spent()
    limit = "no cap set by the policy" if ledger.limit is None else f"policy lifetime_epsilon {ledger.limit}"
    print(f"\nlifetime ledger: {len(ledger.runs)} DP training(s), lifetime epsilon {total:.4f} ({limit})")
    print(f"composition: {composition_statement(accountant=used, delta=ledger.delta)}")
    for number, run in enumerate(ledger.runs, start=1):
        print(f"  {number:>3}. {run.created_at}  epsilon={run.epsilon:.4f} delta={run.delta:g} "
              f"sigma={run.noise_multiplier:.3f} q={run.sample_rate:.4f} steps={run.steps}  "
              f"report {run.report_sha256[:16]}…")


def _run(args: argparse.Namespace) -> int:
    from client_agent.agent import Agent

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_format == "json":
        from server.observability.logs import use_log_format

        use_log_format("json")  # one JSON object per line, for the site's log shipper
    agent = Agent.open(_config(args), progress=not args.quiet)
    try:
        summary = agent.run(max_tasks=args.max_tasks)
    finally:
        agent.close()
    print(json.dumps({"stopped": summary.stop_reason, "receipted": summary.receipted, "refused": summary.refused,
                      "abandoned": summary.abandoned, "resubmitted": summary.resubmitted}), flush=True)
    return 0


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the agent's TOML (see `mor client init-config`)")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("client", help="a consortium member's client agent")
    actions = parser.add_subparsers(dest="client_action", required=True, metavar="ACTION")

    init = actions.add_parser("init-config", help="write an agent.toml (validated when complete)")
    init.add_argument("--out", required=True, help="where to write the config")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    for flag in _INIT_VALUES:
        table, key, _ = _INIT_VALUES[flag]
        init.add_argument("--" + flag.replace("_", "-"), dest=flag, help=f"[{table}].{key}")
    init.add_argument("--model-param", action="append", metavar="KEY=VALUE",
                      help="[model].params entry, repeatable (e.g. --model-param path=/models/rm)")
    init.add_argument("--insecure-pilot", action="store_true", help="[agent].insecure_pilot = true (pilots only)")
    init.set_defaults(func=_guarded(_init_config))

    train = actions.add_parser("train", help="train the reward model under DP and sign the privacy report")
    _add_config(train)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_guarded(_train))

    report = actions.add_parser("privacy-report", help="print this agent's verified privacy report")
    _add_config(report)
    report.add_argument("--json", action="store_true", help="the signed report as JSON")
    report.set_defaults(func=_guarded(_privacy_report))

    run = actions.add_parser("run", help="enrol and serve scoring tasks until SIGTERM")
    _add_config(run)
    run.add_argument("--max-tasks", type=int, default=None, help="stop after this many tasks (default: never)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"],
                     help="log lines as text or one JSON object per line")
    run.set_defaults(func=_guarded(_run))
    add_site_key_actions(actions, "client")
