"""``[observability]`` of ``server.toml`` and ``keyholder.toml``: the probe listener and the log format.

Why a separate listener and what it may show: the API port requires a client certificate at
the TLS handshake, which a Kubernetes kubelet, a load balancer's health check or Prometheus
does not have. Rather than weaken that port (an unauthenticated path on it would be reachable
by anyone who can open a TCP connection), a second, plain-HTTP listener answers exactly three
paths — ``/livez``, ``/readyz`` and ``/metrics`` — whose replies hold no member data: no
identity, no score, no envelope, no audit content; only counts by outcome and refusal code,
durations, sizes and expiry times (``deploy/RUNBOOK.md``, "Probes and metrics"). It binds to
loopback unless told otherwise, and it is off unless ``probe_port`` is set.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LogFormat = Literal["text", "json"]


class ObservabilitySettings(BaseModel):
    """The optional ``[observability]`` table (all keys optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probe_host: str = Field(
        default="127.0.0.1", description="address of the probe/metrics listener (plain HTTP, no client certificate): "
                                         "loopback unless a kubelet or Prometheus on another host must reach it")
    probe_port: int | None = Field(
        default=None, ge=1, le=65535, description="port of /livez, /readyz and /metrics; leave out for no listener")
    log_format: LogFormat = Field(
        default="text", description="text | json (one JSON object per line); the CLI's --log-format wins over this")
