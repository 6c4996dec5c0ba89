"""``mor audit fetch``: download a verifiable copy of the server's audit log, over mutual TLS.

An auditor's certificate reads the log through the auditor-only routes (``wire.audit_export``).
Steps, and why each:

1. ``GET /v1/audit/checkpoint`` — the server signs a head covering every entry so far; the copy
   stops exactly there, so it is sealed (no entries after its last checkpoint) and
   ``mor audit verify`` needs no ``--allow-unsealed-tail``;
2. ``GET /v1/audit/public-key`` — written as ``log_public_key.pem`` (the verifier compares it
   with the key it is given, never trusts it);
3. ``GET /v1/audit/checkpoints`` and ``/v1/audit/entries``, page by page, up to that head: the
   lines exactly as the server stores them, written one per line (the :mod:`audit.storage` layout);
4. the copy is verified (:func:`audit.verify_log`) with ``--public-key`` when given — the key
   obtained out of band — else with the key the server served, which proves only that the copy
   is self-consistent (said so in the output). A copy that fails is **not** left at ``--out``:
   it is moved to ``<out>.unverified`` for inspection, the reasons are printed, and the exit
   code is 1.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.storage import CHECKPOINTS, ENTRIES, PUBLIC_KEY
from mor_cli.errors import CommandError

if TYPE_CHECKING:  # imported when a fetch runs, so building the `mor` parser stays fast
    import httpx

PAGE = 1000


def register(actions: Any) -> None:
    fetch = actions.add_parser("fetch", help="download a verifiable copy of the server's audit log (auditor "
                                             "certificate), then verify it")
    fetch.add_argument("--server", required=True, help="the server's base URL, e.g. https://mor.example:8443")
    fetch.add_argument("--cert", required=True, help="your auditor certificate (PEM)")
    fetch.add_argument("--key", required=True, help="its private key (PEM)")
    fetch.add_argument("--ca", required=True, help="the consortium CA certificate (PEM)")
    fetch.add_argument("--out", required=True, help="directory for the copy (must not hold a log already)")
    fetch.add_argument("--public-key", help="the server log's public key obtained out of band (PEM): the copy is "
                                            "verified with it; without it, only with the key the server serves")


def _get(http: httpx.Client, path: str, params: dict[str, int] | None = None) -> httpx.Response:
    import httpx

    try:
        reply = http.get(path, params=params)
    except httpx.HTTPError as exc:
        raise CommandError(f"GET {path}: {exc}") from None
    if reply.status_code != 200:
        try:
            body = reply.json()
            reason = f"{body['code']}: {body['message']}"
        except (ValueError, KeyError, TypeError):
            reason = reply.text[:300]
        hint = " (an 'auditor' certificate is needed)" if reply.status_code == 403 else ""
        raise CommandError(f"GET {path}: HTTP {reply.status_code} {reason}{hint}")
    return reply


def _paged(http: httpx.Client, path: str, wanted: Callable[[list[str]], bool]) -> list[str]:
    """Lines of ``path`` from 0, page by page, until ``wanted(lines)`` says enough or the server has no more."""
    lines: list[str] = []
    while not wanted(lines):
        page = _get(http, path, {"start": len(lines), "limit": PAGE}).json()
        if page.get("start") != len(lines) or not isinstance(page.get("lines"), list):
            raise CommandError(f"GET {path}: the server answered a page that does not start at {len(lines)}")
        lines.extend(str(line) for line in page["lines"])
        if not page["lines"] or page.get("next") is None:
            break
    return lines


def _head_line(lines: list[str], head: dict[str, Any]) -> int:
    """Index of the checkpoint line the served head is (by size and root), or -1."""
    for i, line in enumerate(lines):
        try:
            body = json.loads(line)["checkpoint"]
        except (ValueError, KeyError, TypeError, RecursionError):  # the server sent it: anything may stand here
            continue
        if isinstance(body, dict) and body.get("size") == head["size"] and body.get("root") == head["root_sha256"]:
            return i
    return -1


def download(http: httpx.Client, target: Path) -> tuple[int, int]:
    """Write the copy into ``target``: (entries, checkpoints)."""
    head = _get(http, "/v1/audit/checkpoint").json()
    key_pem = _get(http, "/v1/audit/public-key").content
    checkpoints = _paged(http, "/v1/audit/checkpoints", lambda got: _head_line(got, head) >= 0)
    at = _head_line(checkpoints, head)
    if at < 0:
        raise CommandError(f"the server's checkpoints do not include the head it served (size {head['size']})")
    checkpoints = checkpoints[:at + 1]
    size = int(head["size"])
    entries = _paged(http, "/v1/audit/entries", lambda got: len(got) >= size)[:size]
    if len(entries) != size:
        raise CommandError(f"the server served {len(entries)} entries; its signed head says {size}")
    target.mkdir(parents=True, mode=0o700)
    for name, lines in ((ENTRIES, entries), (CHECKPOINTS, checkpoints)):
        (target / name).write_bytes(b"".join(line.encode("utf-8") + b"\n" for line in lines))
    (target / PUBLIC_KEY).write_bytes(key_pem)
    return size, len(checkpoints)


def fetch(args: Any) -> int:
    import httpx

    from audit.verify import verify_log
    from crypto.signing import VerifyKey
    from crypto.tls import client_ssl_context

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CommandError(f"{out}: exists and is not empty; fetch into a new directory")
    rejected = out.with_name(out.name + ".unverified")
    partial = out.with_name(out.name + ".partial")
    for stale in (partial, rejected):
        shutil.rmtree(stale, ignore_errors=True)
    trusted = VerifyKey.load(args.public_key) if args.public_key else None
    context = client_ssl_context(args.cert, args.key, args.ca)  # KeyFileError: a one-line error (audit_cmd)
    with httpx.Client(base_url=args.server.rstrip("/"), verify=context, timeout=60, trust_env=False) as http:
        entries, checkpoints = download(http, partial)
    served = VerifyKey.load(partial / PUBLIC_KEY)
    report = verify_log(partial, trusted or served)
    if not report.ok:
        os.replace(partial, rejected)
        print(f"REFUSED: the copy of {args.server}'s log does not verify: {report.first_problem}")
        for problem in report.problems[1:]:
            print(f"  also: {problem}")
        print(f"the download is kept for inspection in {rejected} (not in {out})")
        return 1
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
    print(f"fetched      {entries} entries, {checkpoints} signed checkpoints  origin {report.origin}")
    print(f"copy         {out}")
    print(f"log key      sha256 {served.fingerprint()}")
    if trusted is not None:
        print("OK: the copy verifies with the key you gave (--public-key)")
    else:
        print("OK: the copy is self-consistent under the key the server served; compare that key's fingerprint "
              f"with the one you obtained out of band, then: mor audit verify {out} --public-key KEY")
    return 0
