"""The TOML files a server and a key holder start from, written one way for the demo, the bench and the tests.

Each party keeps its state in one data folder (``data``)::

    server:     state.db  audit/  server-signing.pem  ckks-secret.bin (ckks only)  out/
    key holder: ckks-secret.bin  audit/  keyholder-signing.pem

Callers override single keys (``long_poll_max_s=10.0``, ``requests_per_s=1000.0``) rather
than writing their own tables, so a new required key is added here once and every run gets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from policies.render import toml_document
from sim.harness.processes import LOOPBACK


def write_toml(path: Path, tables: Mapping[str, Mapping[str, object]], *, top: Mapping[str, object] | None = None,
               header: str | None = None) -> Path:
    """``top`` keys, then one ``[table]`` per entry (None values left out); parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_document(tables, top=top, header=header), "utf-8")
    return path


def server_config(path: Path, *, data: Path, tls: Mapping[str, object], policy: Path, port: int,
                  keyholder_url: str | None = None, ckks_secret: bool = True, header: str | None = None,
                  **overrides: object) -> Path:
    """``mor server serve|run``'s config; ``ckks_secret=False`` for a server that must hold no secret key."""
    data = Path(data)
    server: dict[str, object] = {
        "host": LOOPBACK, "port": port, "policy": str(policy), "database_url": f"sqlite:///{data / 'state.db'}",
        "audit_dir": str(data / "audit"), "signing_key": str(data / "server-signing.pem"),
        "ckks_secret_context": str(data / "ckks-secret.bin") if ckks_secret else None,
        "output_dir": str(data / "out"), "keyholder_url": keyholder_url,
    }
    server.update(overrides)
    return write_toml(path, {"server": server, "tls": tls}, header=header)


def keyholder_config(path: Path, *, data: Path, tls: Mapping[str, object], server_identity: str, port: int,
                     policy: Path | None = None, header: str | None = None, **overrides: object) -> Path:
    """``mor keyholder serve``'s config: decrypts only for ``server_identity``; ``policy`` gates public rounds."""
    data = Path(data)
    keyholder: dict[str, object] = {
        "host": LOOPBACK, "port": port, "server_identity": server_identity,
        "secret_context": str(data / "ckks-secret.bin"), "audit_dir": str(data / "audit"),
        "signing_key": str(data / "keyholder-signing.pem"), "policy": str(policy) if policy else None,
    }
    keyholder.update(overrides)
    return write_toml(path, {"keyholder": keyholder, "tls": tls}, header=header)


def config_port(config: Path, table: str) -> int:
    """The port a config's ``[table]`` serves on."""
    import tomllib

    return int(tomllib.loads(Path(config).read_text("utf-8"))[table]["port"])
