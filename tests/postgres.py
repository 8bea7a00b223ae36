"""A fresh PostgreSQL database for each test that needs one.

The server comes from ``SCAISEND_TEST_POSTGRES_URL`` (see ``tests/conftest.py:postgres_url``);
its role needs ``CREATEDB`` (``.ci/run`` grants it). Each test gets an empty database of its
own, so tests never see each other's rows or schema, and it is dropped afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
from psycopg2 import sql


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server, as the same role."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin(url: str) -> psycopg2.extensions.connection:
    connection = psycopg2.connect(url)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return connection


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """Create an empty database beside the one ``url`` names; yield its URL; drop it."""
    name = f"scaisend_t_{uuid.uuid4().hex[:16]}"
    admin = _admin(url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield with_database(url, name)
    finally:
        _drop(admin, name)
        admin.close()


def _drop(admin: psycopg2.extensions.connection, name: str) -> None:
    # FORCE ends connections a test left open (a connection pool, a killed server). It cannot
    # end an autovacuum worker as a non-superuser, so wait for that one to finish and retry.
    deadline = time.monotonic() + 60
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    while True:
        try:
            with admin.cursor() as cursor:
                cursor.execute(statement)
            return
        except psycopg2.errors.InsufficientPrivilege:
            if time.monotonic() > deadline:
                raise
            with admin.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(0.2)")
