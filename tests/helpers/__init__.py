"""Shared test helpers: a throw-away consortium PKI and real server processes on loopback.

Import as ``from helpers.pki import make_pki`` and ``from helpers.procs import start_server``
(pytest puts ``tests/`` on ``sys.path`` because ``tests/conftest.py`` lives there).
"""
