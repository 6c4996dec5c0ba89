"""``mor demo``: the whole system end to end on one machine, as separate processes over mTLS.

Phases, one printed line each (:data:`PHASES`)::

    provision   CA + certificates, the run's policy, private data and every party's config
    dp-train    three `mor client train` processes (different architectures and preference styles),
                each to its local (ε, δ) budget; meanwhile, in this process:
    policy      the pretrained policy VLM is converted, built and warm-started (each cached), or the
                1.0M toy (``--toy-model``, for fast tests), or --model is used as given
    services    the key holder (fused-only) and `mor server run` (API + training), ready over mTLS
    align       three `mor client run` agents; the server calibrates, fits the router, runs GRPO
    stop        agents, server, key holder get SIGTERM and must exit 0 (final signed checkpoints)
    audit       every log verified; every agent receipt reconciled with the server's log
    evaluate    aligned policy vs its reference on held-out test prompts
    report      results.json + report.html

Why the demo only *orchestrates*: each party runs the same ``mor`` command an operator would
run, so what the demo proves is what a deployment does. The demo process reads the parties'
outputs (metrics, audit logs, privacy reports) only after the fact, as an auditor would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sim.demo.provision import Deployment, Scale, prepare_out, provision, write_training_config
from sim.errors import ProcessFailedError, ProvisionError, SimError
from sim.harness import ManagedProcess, ProcessGroup, wait_ready

PHASES = ("provision", "dp-train", "policy", "services", "align", "stop", "audit", "evaluate", "report")
# Each agent process gets one torch thread: three of them share 2 cores with the server.
AGENT_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    policy: Path
    quick: bool = False
    model: Path | None = None
    toy_model: bool = False  # the 1.0M toy instead of the pretrained default: for fast tests
    seed: int = 0
    cache: Path | None = None
    overwrite: bool = False
    training_timeout_s: float = 1800.0

    @property
    def scale(self) -> Scale:
        scale = Scale.quick() if self.quick else Scale.default()
        return scale if self.toy_model else scale.for_pretrained()


@dataclass
class DemoOutcome:
    results: dict[str, Any]
    results_path: Path
    report_path: Path

    @property
    def ok(self) -> bool:
        return bool(self.results.get("ok"))


@dataclass
class _Run:
    options: DemoOptions
    say: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)
    step: int = 0

    @contextmanager
    def phase(self, name: str, text: str) -> Iterator[None]:
        self.step += 1
        self.say(f"[{self.step}/{len(PHASES)}] {name}: {text}")
        started = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - started, 1)


def default_cache() -> Path:
    """Where the converted, built and warm-started policy VLM is kept between runs (``$MOR_CACHE_DIR`` wins)."""
    from server.vlm.pretrained import cache_dir

    return cache_dir()


def policy_model(options: DemoOptions, say: Callable[[str], None] = print,
                 busy: Callable[[], bool] | None = None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint GRPO starts from (and the reference it is compared with), and how it was made.

    While ``busy()`` (the DP trainers still run on the same cores) the warm start uses one torch
    thread, then all of them again.
    """
    import torch

    from sim.demo.policy_model import choose_policy_model

    cores = torch.get_num_threads()
    try:
        choice = choose_policy_model(model=options.model, toy=options.toy_model, quick=options.quick,
                                     seed=options.seed, cache=options.cache or default_cache(), say=say,
                                     threads=None if busy is None else lambda: 1 if busy() else cores)
    finally:
        torch.set_num_threads(cores)
    return choice.path, choice.info


def _policy_text(options: DemoOptions) -> str:
    if options.model is not None:
        return f"policy model {options.model}"
    if options.toy_model:
        return "toy VLM (1.0M, random weights) built and warm-started (cached after the first run)"
    return ("SmolLM2-135M VLM converted, built and warm-started (about 10 min once, cached after the first run)")


def _agent_summary(process: ManagedProcess) -> dict[str, Any]:
    """The JSON line ``mor client run`` prints when it stops."""
    for line in reversed(process.log_tail(20000).splitlines()):
        if line.startswith("{") and '"receipted"' in line:
            try:
                return dict(json.loads(line))
            except ValueError:
                break
    return {}


def _train_agents(group: ProcessGroup, consortium: Deployment) -> list[ManagedProcess]:
    return [group.start(f"train-{a.spec.name}", ["client", "train", "--config", str(a.config), "--quiet"],
                        env=AGENT_ENV) for a in consortium.agents]


def _wait_trained(processes: list[ManagedProcess], timeout_s: float) -> None:
    with tqdm(total=len(processes), desc="reward models trained under DP", unit="agent", disable=None) as bar:
        for process in processes:
            if process.wait(timeout_s) != 0:
                raise process.failure("failed")
            bar.update(1)


def _start_services(group: ProcessGroup, consortium: Deployment) -> ManagedProcess:
    context = consortium.auditor_context()
    if consortium.keyholder_config is not None:
        keyholder = group.start("keyholder", ["keyholder", "serve", "--config", str(consortium.keyholder_config)])
        wait_ready(keyholder, f"{consortium.keyholder_url}/v1/keyholder/status", ssl_context=context)
    server = group.start("server", ["server", "run", "--config", str(consortium.server_config), "--training",
                                    str(consortium.training_config), "--keep-serving"])
    wait_ready(server, f"{consortium.server_url}/v1/status", ssl_context=context, timeout=180)
    return server


def _metrics(consortium: Deployment) -> list[dict[str, Any]]:
    path = consortium.training_out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _align(server: ManagedProcess, agents: list[ManagedProcess], consortium: Deployment, steps: int,
           timeout_s: float) -> None:
    """Wait until the server's training run wrote its report, showing GRPO steps as they land."""
    done = consortium.training_out / "training_report.json"
    deadline = time.monotonic() + timeout_s
    with tqdm(total=steps, desc="GRPO steps (federated reward)", unit="step", disable=None) as bar:
        while not done.is_file():
            if not server.alive():
                raise server.failure("stopped before training finished")
            for agent in agents:
                if not agent.alive():
                    raise agent.failure("stopped during training")
            if time.monotonic() > deadline:
                raise ProcessFailedError(f"training did not finish within {timeout_s:.0f} s; server log "
                                         f"{server.log}:\n{server.log_tail()}")
            bar.update(min(len(_metrics(consortium)), steps) - bar.n)
            time.sleep(1.0)
        bar.update(min(len(_metrics(consortium)), steps) - bar.n)


def _stop(group: ProcessGroup, agents: list[ManagedProcess]) -> dict[str, dict[str, Any]]:
    """Agents first (they finish the task in hand), then the server, then the key holder."""
    ordered = agents + [p for p in reversed(group.processes) if p.name in ("server", "keyholder")]
    return {p.name: {"exit": p.stop(), "killed": p.killed} for p in ordered}


def run_demo(options: DemoOptions, *, say: Callable[[str], None] = print) -> DemoOutcome:
    """Run every phase (see the module docstring); raises :class:`SimError` if a phase cannot complete."""
    from sim.demo.results import collect_results

    run, scale = _Run(options, say), options.scale
    started = time.monotonic()
    out = options.out.resolve()
    with run.phase("provision", f"consortium CA, certificates and configs in {out}"):
        if not options.policy.is_file():
            raise ProvisionError(f"--policy {options.policy}: no such file")
        prepare_out(out, overwrite=options.overwrite)
        consortium = provision(out, options.policy.resolve(), scale=scale, seed=options.seed)
        for warning in consortium.insecure:
            say(f"WARNING (insecure, recorded in the report): {warning}")
    group = ProcessGroup(out / "logs", cwd=out)
    with group:
        with run.phase("dp-train", "3 agents train their reward models under DP (separate processes)"):
            trainers, trainers_started = _train_agents(group, consortium), time.monotonic()
        with run.phase("policy", _policy_text(options)):
            model_path, model_info = policy_model(options, say, busy=lambda: any(p.alive() for p in trainers))
            write_training_config(consortium, model_path=model_path, scale=scale, seed=options.seed)
        _wait_trained(trainers, timeout_s=1800)
        run.timings["dp-train"] = round(time.monotonic() - trainers_started, 1)  # wall time, overlapping "policy"
        with run.phase("services", "key holder (fused-only) and server over mutual TLS"
                       if consortium.fused_only else "server over mutual TLS"):
            server = _start_services(group, consortium)
        with run.phase("align", "agents enrol; calibration, router fit, GRPO on the fused reward"):
            agents = [group.start(a.spec.name, ["client", "run", "--config", str(a.config), "--quiet"],
                                  env=AGENT_ENV) for a in consortium.agents]
            _align(server, agents, consortium, scale.grpo_steps, options.training_timeout_s)
        with run.phase("stop", "SIGTERM to every party; each must close its audit log and exit 0"):
            exits = _stop(group, agents)
            summaries = {p.name: _agent_summary(p) for p in agents}
    with run.phase("audit", "verify every audit log; reconcile agent receipts with the server's log"):
        from sim.demo.results import reconcile_run

        reconciliation = reconcile_run(consortium)
    with run.phase("evaluate", f"aligned policy vs reference on {scale.n_eval} held-out test prompts"):
        from sim.demo.evaluate import evaluate_policy

        evaluation = evaluate_policy(model_path, consortium.training_out / "grpo" / "final", n_prompts=scale.n_eval,
                                     styles=[a.spec.style for a in consortium.agents], seed=options.seed,
                                     max_new_tokens=scale.max_completion_length)
    with run.phase("report", "results.json and report.html"):
        from sim.demo.report import write_report

        run.timings["total"] = round(time.monotonic() - started, 1)
        results = collect_results(consortium, options=options, model=model_info, exits=exits, summaries=summaries,
                                  reconciliation=reconciliation, evaluation=evaluation, timings=run.timings)
        results_path, report_path = write_report(results, out)
    return DemoOutcome(results, results_path, report_path)


__all__ = ["PHASES", "DemoOptions", "DemoOutcome", "SimError", "default_cache", "policy_model", "run_demo"]
