"""Shared test helpers: thin, test-friendly defaults on top of the one harness, :mod:`sim.harness`.

``helpers.pki`` (a throw-away consortium PKI) and ``helpers.procs`` (server, key-holder and
agent processes on loopback) only choose where files go; certificates, configs and processes
are the harness's, the same the demo and the bench use. ``helpers.consortium`` holds what
server tests share (a policy file, an agent speaking HTTP, audit-log readers);
``helpers.browser`` runs headless Chromium with the test's own NSS database.

Import as ``from helpers.pki import make_pki`` and ``from helpers.procs import start_server``
(pytest puts ``tests/`` on ``sys.path`` because ``tests/conftest.py`` lives there).
"""
