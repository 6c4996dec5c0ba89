"""Test-wide settings: nothing may reach a model hub, ever."""

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster on loopback for the whole run (tests/helpers/postgres.py).

    Skips its tests with the reason when there is none — fails them under ``CI=true``.
    """
    from helpers.postgres import postgres_server

    with postgres_server() as server:
        yield server
