from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest

from core import logs
from core.testing import Harness
from tests.postgres import fresh_database


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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[pw.Database]:
    """The migrated database of a runtime, on a new SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        runtime = Harness(tmp_path, database_url=f"sqlite:///{tmp_path / 'db'}").open_runtime()
        try:
            yield runtime.db
        finally:
            runtime.close()
        return
    with fresh_database(postgres_url()) as url:
        runtime = Harness(tmp_path, database_url=url).open_runtime()
        try:
            yield runtime.db
        finally:
            runtime.close()
