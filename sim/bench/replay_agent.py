"""A lightweight sender for bench section 4: pre-sealed envelopes replayed as fast as the server takes them.

Why: with 64 synthetic agents on the server's 2 cores, every agent's own signing, JSON
encoding and TLS work competes with the server, so the section measured the machine and not
the server. This process enrols one member, is handed its tasks by the bench (the server's
own store issued them), seals **before** the timed phase — one CKKS encryption, then one
freshly signed envelope per task (new nonce, timestamp, round and task binding), encoded for
the transport under test — and then only sends: ``threads`` persistent mutual-TLS connections
posting the ready bodies back to back. Receipts are checked (server signature, digest) after
the timed phase, so checking costs nothing inside it.

Commands (JSON lines on stdin; one JSON line answers each):

* ``{"cmd": "prepare", "tasks": [[round_id, task_id], ...], "transport": "json"|"binary"}``
* ``{"cmd": "send", "threads": k}`` — every prepared body; answers counts, latencies, errors;
* ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import secrets
import sys
import threading
import time
from typing import Any

import httpx

from crypto.canonical import canonical_json
from crypto.ckks import PublicContext, load_public_context
from crypto.envelope import BINARY_MEDIA_TYPE, Envelope, seal_scores
from crypto.signing import SigningKey, VerifyKey
from crypto.tls import client_ssl_context
from sim.bench.synth_agent import enrol_body

SCORES = 64
ROUTES = {"json": "/v1/submissions", "binary": "/v1/submissions/binary"}


class Sender:
    def __init__(self, args: argparse.Namespace) -> None:
        self.identity = args.identity
        self.key = SigningKey.generate()
        self.tls = client_ssl_context(args.cert, args.key, args.ca, None)
        self.url = args.url
        self.server_key: VerifyKey | None = None
        self.context: PublicContext | None = None
        self.prepared: list[tuple[str, bytes, dict[str, str], str]] = []  # route, body, headers, digest
        self.template: Envelope | None = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls, timeout=httpx.Timeout(120.0))

    def enrol(self) -> None:
        with self.client() as http:
            reply = http.post("/v1/enrol", json=enrol_body(self.identity, self.key, "replaying benchmark sender"))
            reply.raise_for_status()
            self.server_key = VerifyKey.from_bytes(base64.b64decode(reply.json()["server_signing_public_key_b64"]))
            context = http.get("/v1/context")
            context.raise_for_status()
        self.context = load_public_context(context.content)

    def envelope(self, round_id: str, task_id: str) -> Envelope:
        assert self.context is not None
        ids = {"signing_key": self.key, "sender": self.identity, "round_id": round_id, "task_id": task_id}
        if self.template is None:
            self.template = seal_scores([((i * 7919) % 200 - 100) / 50.0 for i in range(SCORES)], self.context,
                                        **ids)
        fresh = dataclasses.replace(self.template, round_id=round_id, task_id=task_id, nonce=secrets.token_hex(16),
                                    timestamp=time.time(), signature=b"")
        return dataclasses.replace(fresh, signature=self.key.sign(fresh.signed_bytes()))

    def prepare(self, tasks: list[list[str]], transport: str) -> int:
        self.prepared = []
        for round_id, task_id in tasks:
            env = self.envelope(round_id, task_id)
            if transport == "binary":
                body, headers = env.to_binary(), {"content-type": BINARY_MEDIA_TYPE}
            else:
                body = json.dumps({"task_id": task_id, "envelope": env.to_dict()}).encode()
                headers = {"content-type": "application/json"}
            self.prepared.append((ROUTES[transport], body, headers, env.sha256()))
        return len(self.prepared)

    def send(self, threads: int) -> dict[str, Any]:
        work = list(enumerate(self.prepared))
        lock = threading.Lock()
        latencies: list[float] = []
        answers: list[tuple[int, int, bytes]] = []
        errors: dict[str, int] = {}

        def worker() -> None:
            with self.client() as http:
                while True:
                    with lock:
                        if not work:
                            return
                        index, (route, body, headers, _) = work.pop(0)
                    started = time.perf_counter()
                    try:
                        reply = http.post(route, content=body, headers=headers)
                    except httpx.HTTPError as exc:
                        with lock:
                            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                        continue
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        answers.append((index, reply.status_code, reply.content))

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        started = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - started
        accepted = valid = 0
        for index, status, content in answers:
            if status != 200:
                try:
                    code = f"{status}:{json.loads(content).get('code', '?')}"
                except ValueError:
                    code = str(status)
                errors[code] = errors.get(code, 0) + 1
                continue
            accepted += 1
            valid += int(self.receipt_ok(json.loads(content), self.prepared[index][3]))
        return {"accepted": accepted, "receipts_valid": valid, "latencies": latencies, "errors": errors,
                "elapsed_s": elapsed}

    def receipt_ok(self, receipt: dict[str, Any], digest: str) -> bool:
        assert self.server_key is not None
        signed = canonical_json({k: v for k, v in receipt.items() if k != "signature_b64"})
        try:
            self.server_key.verify(base64.b64decode(receipt["signature_b64"]), signed)
        except Exception:  # noqa: BLE001 - a bad receipt is counted, not fatal
            return False
        return bool(receipt.get("envelope_sha256") == digest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--url", "--cert", "--key", "--ca", "--identity"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    sender = Sender(args)
    sender.enrol()
    print(json.dumps({"ready": sender.identity}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return 0
        if command["cmd"] == "prepare":
            print(json.dumps({"prepared": sender.prepare(command["tasks"], command["transport"])}), flush=True)
        elif command["cmd"] == "send":
            print(json.dumps(sender.send(int(command["threads"]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
