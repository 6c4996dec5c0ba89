"""Observability of the serving parties: probes, Prometheus metrics, log format (issue 15 §3).

    settings.py   the ``[observability]`` table (probe listener address, log format)
    metrics.py    counters derived from the audit entries as they are written; file gauges
    readiness.py  what ``/readyz`` checks, one small function each
    probes.py     the plain-HTTP ``/livez`` ``/readyz`` ``/metrics`` listener
    wiring.py     builds all of it for the server and the key holder
    logs.py       text or JSON log lines; progress bars only on a terminal

Errors: binding or starting the listener is a :class:`server.errors.ServerError` naming the address.
"""
