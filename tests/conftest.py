from __future__ import annotations

import os

import pytest

from core import logs


@pytest.fixture(autouse=True, scope="session")
def _json_logs() -> None:
    logs.configure("debug", json=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def postgres_url() -> str:
    """The PostgreSQL server the storage tests use; in CI its absence is a failure."""
    url = os.environ.get("SCAISEND_TEST_POSTGRES_URL", "")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("SCAISEND_TEST_POSTGRES_URL is not set: .ci/run must start PostgreSQL")
        pytest.skip("set SCAISEND_TEST_POSTGRES_URL (bash .ci/run does) to run PostgreSQL tests")
    return url
