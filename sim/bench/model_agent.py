"""A benchmark agent with a real reward model: a separate process, real mTLS, real scoring and sealing.

    python -m sim.bench.model_agent --cert C --key K --ca CA --identity ID --model-dir DIR

It loads a reward model saved with :meth:`client_agent.rewards.base.RewardModel.save` (through
the agent's own loader, digest checked) and prints ``{"ready": ...}``. Then it obeys JSON
commands on stdin, one per line:

* ``{"cmd": "connect", "url": U}`` — enrol at the server ``U`` (a fresh Ed25519 key, the
  public CKKS context unless tls-only); replies ``{"connected": U, "mode": ...}``. One process
  serves the servers of every privacy mode in turn, so the model is loaded once;
* ``{"cmd": "round", "max_s": S}`` — long-poll one task, score it with the agent's own
  scoring path (:func:`client_agent.scoring.score_items`), seal it (CKKS, or signed plain
  scores under tls-only) as :meth:`client_agent.agent.Agent.handle` does, submit it, verify the
  server's signed receipt; reply with the raw scores and the wall-clock time of each stage
  boundary (``received``, ``scored``, ``sealed``, ``receipted``: ``time.time()``, the clock the
  bench shares on this machine);
* ``{"cmd": "quit"}`` — exit.

What it leaves out of the real agent loop: the task ledger commit (fsync) and the agent's
own audit-log entries around the submission, and the inclusion-proof fetch after it — agent
bookkeeping that is not part of the exchange the bench times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from client_agent.receipts import verify_receipt
from client_agent.rewards.registry import load_reward_model
from client_agent.scoring import score_items, seal_for_mode
from sim.bench.synth_agent import Agent as WireAgent
from wire.messages import Receipt, ScoringTask


def answer_one(agent: WireAgent, model: Any, max_s: float, batch_size: int) -> dict[str, Any]:
    """Wait for one task, score, seal, submit; the stage boundaries and the scores (or an error)."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        reply = agent.http.get("/v1/tasks/next", params={"wait": min(1.0, max(0.0, deadline - time.monotonic()))})
        if reply.status_code != 204:
            break
    else:
        return {"error": f"no task within {max_s} s"}
    received = time.time()
    reply.raise_for_status()
    task = ScoringTask.model_validate(reply.json())
    scores = score_items(model, task.prompts, task.items, batch_size=batch_size, progress=False)
    values = [float(v) for v in scores.tolist()]
    scored = time.time()
    envelope = seal_for_mode(values, agent.mode, agent.context, signing_key=agent.key, sender=agent.identity,
                             round_id=task.round_id, task_id=task.task_id, now=scored)
    body = {"task_id": task.task_id, "envelope": envelope.to_dict()}
    sealed = time.time()
    answer = agent.http.post("/v1/submissions", json=body)
    if answer.status_code != 200:
        return {"error": f"submission refused: HTTP {answer.status_code} {answer.text[:300]}"}
    receipt = Receipt.model_validate(answer.json())
    assert agent.server_key is not None
    verify_receipt(receipt, agent.server_key, agent=agent.identity, task_id=task.task_id, round_id=task.round_id,
                   envelope_sha256=envelope.sha256())
    return {"round_id": task.round_id, "task_id": task.task_id, "scores": values, "received": received,
            "scored": scored, "sealed": sealed, "receipted": time.time(), "bytes": len(json.dumps(body))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--cert", "--key", "--ca", "--identity", "--model-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--batch-size", type=int, default=64, help="scoring batch size (the agent's default)")
    args = parser.parse_args(argv)
    model = load_reward_model(Path(args.model_dir))
    print(json.dumps({"ready": args.identity, "arch": model.arch}), flush=True)
    agent: WireAgent | None = None
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("cmd") == "quit":
            break
        try:
            if command.get("cmd") == "connect":
                if agent is not None:
                    agent.http.close()
                wire_args = argparse.Namespace(url=command["url"], cert=args.cert, key=args.key, ca=args.ca,
                                               identity=args.identity, fresh_seal=True)
                agent = WireAgent(wire_args)
                agent.enrol()
                result: dict[str, Any] = {"connected": command["url"], "mode": agent.mode}
            elif command.get("cmd") == "round" and agent is not None:
                result = answer_one(agent, model, float(command.get("max_s", 120.0)), args.batch_size)
            else:
                result = {"error": f"unknown or premature command {command!r}"}
        except Exception as exc:  # noqa: BLE001 - reported to the bench, which fails the section with it
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
