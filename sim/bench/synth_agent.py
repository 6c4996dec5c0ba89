"""A synthetic client agent for load benchmarks: a separate process, real mTLS, real envelopes.

    python -m sim.bench.synth_agent --url https://127.0.0.1:PORT --cert C --key K --ca CA --identity ID

It enrols (a fresh Ed25519 key and a signed privacy report), fetches the public CKKS context
and prints ``{"ready": ...}``; then it obeys JSON commands on stdin, one per line:

* ``{"cmd": "work", "max_s": S}`` — long-poll for tasks and answer each with a signed envelope
  until ``{"cmd": "stop"}`` arrives or ``S`` seconds pass; then print what happened: accepted
  submissions, receipts whose server signature verified, per-submission latency, errors;
* ``{"cmd": "quit"}`` — exit.

Why it does not score: it stands in for many agents at once, so it must cost the machine as
little as possible. It encrypts one score vector per length and signs a *fresh* envelope (new
nonce, timestamp, round and task binding) around it for every task — the server does all of
its per-envelope work (signature, binding, freshness, nonce, length, audit, receipt, storage),
the agent skips the ~5 ms encryption per envelope. ``--fresh-seal`` encrypts every time.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import queue
import secrets
import sys
import threading
import time
from typing import Any

import httpx

from crypto.canonical import canonical_json
from crypto.ckks import PublicContext, load_public_context
from crypto.envelope import BINARY_MEDIA_TYPE, Envelope, seal_scores, sign_plain_scores
from crypto.signing import SigningKey, VerifyKey
from crypto.tls import client_ssl_context
from wire.messages import PrivacyMode


def enrol_body(identity: str, key: SigningKey, note: str) -> dict[str, Any]:
    """``POST /v1/enrol``'s body for a bench member: its signing key and a privacy report signed with it."""
    report: dict[str, Any] = {"identity": identity, "epsilon": 1.0, "delta": 1e-6, "accountant": "prv", "note": note}
    report["signature_b64"] = base64.b64encode(key.sign(canonical_json(report))).decode()
    return {"signing_public_key_b64": base64.b64encode(key.verify_key().raw()).decode(),
            "privacy_report": report, "architecture": "synthetic"}


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.identity = args.identity
        self.fresh_seal = args.fresh_seal
        self.key = SigningKey.generate()
        context = client_ssl_context(args.cert, args.key, args.ca, None)
        self.http = httpx.Client(base_url=args.url, verify=context, timeout=httpx.Timeout(60.0))
        self.mode: PrivacyMode = "ckks"
        self.server_key: VerifyKey | None = None
        self.context: PublicContext | None = None
        self._sealed: dict[int, Envelope] = {}

    def enrol(self) -> None:
        reply = self.http.post("/v1/enrol", json=enrol_body(self.identity, self.key, "synthetic benchmark agent"))
        reply.raise_for_status()
        data = reply.json()
        self.mode = data["privacy_mode"]
        self.server_key = VerifyKey.from_bytes(base64.b64decode(data["server_signing_public_key_b64"]))
        if self.mode != "tls-only":
            context = self.http.get("/v1/context")
            context.raise_for_status()
            self.context = load_public_context(context.content)

    def envelope(self, task: dict[str, Any]) -> Envelope:
        n = len(task["items"])
        scores = [((i * 7919) % 200 - 100) / 50.0 for i in range(n)]
        ids = {"signing_key": self.key, "sender": self.identity, "round_id": task["round_id"],
               "task_id": task["task_id"]}
        if self.mode == "tls-only":
            return sign_plain_scores(scores, **ids)
        assert self.context is not None
        if self.fresh_seal or n not in self._sealed:
            self._sealed[n] = seal_scores(scores, self.context, **ids)
            if self.fresh_seal:
                return self._sealed[n]
        template = dataclasses.replace(self._sealed[n], round_id=task["round_id"], task_id=task["task_id"],
                                       nonce=secrets.token_hex(16), timestamp=time.time(), signature=b"")
        return dataclasses.replace(template, signature=self.key.sign(template.signed_bytes()))

    def work(self, max_s: float, stop: threading.Event) -> dict[str, Any]:
        assert self.server_key is not None
        deadline = time.monotonic() + max_s
        accepted = receipts_ok = 0
        latencies: list[float] = []
        errors: dict[str, int] = {}
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                wait = min(1.0, max(0.0, deadline - time.monotonic()))
                reply = self.http.get("/v1/tasks/next", params={"wait": wait})
                if reply.status_code == 204:
                    continue
                reply.raise_for_status()
                task = reply.json()
                body = self.envelope(task).to_binary()  # what the client agent sends (issue 14 §6)
                started = time.perf_counter()
                answer = self.http.post("/v1/submissions/binary", content=body,
                                        headers={"content-type": BINARY_MEDIA_TYPE})
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if answer.status_code != 200:
                code = f"{answer.status_code}:{answer.json().get('code', '?')}"
                errors[code] = errors.get(code, 0) + 1
                continue
            accepted += 1
            receipt = answer.json()
            signed = canonical_json({k: v for k, v in receipt.items() if k != "signature_b64"})
            try:
                self.server_key.verify(base64.b64decode(receipt["signature_b64"]), signed)
                receipts_ok += 1
            except Exception:  # noqa: BLE001 - a bad receipt is counted, not fatal
                errors["bad_receipt"] = errors.get("bad_receipt", 0) + 1
        return {"accepted": accepted, "receipts_valid": receipts_ok, "latencies": latencies, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--url", "--cert", "--key", "--ca", "--identity"):
        parser.add_argument(name, required=True)
    parser.add_argument("--fresh-seal", action="store_true", help="encrypt every envelope (costs ~5 ms each)")
    args = parser.parse_args(argv)
    agent = Agent(args)
    agent.enrol()
    print(json.dumps({"ready": agent.identity, "mode": agent.mode}), flush=True)
    commands: queue.Queue[dict[str, Any]] = queue.Queue()
    stop = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("cmd") == "stop":
                stop.set()
            else:
                commands.put(command)
        commands.put({"cmd": "quit"})

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        command = commands.get()
        if command.get("cmd") == "quit":
            return 0
        if command.get("cmd") == "work":
            stop.clear()
            result = agent.work(float(command.get("max_s", 60.0)), stop)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
