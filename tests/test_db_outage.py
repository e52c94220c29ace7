"""A request that meets a dropped PostgreSQL connection answers 503 with Retry-After and a
clear message (iacplatform/db_outage.py), on the REST API, the agent API and the pages; a
query's own failure stays what it was. The connection is really terminated, by PostgreSQL.

(PostgreSQL really restarting under a running platform: tests/e2e/test_supervised.py.)"""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, connection
from django.test import Client

from iacplatform.db_outage import database_unavailable
from tests.factories import make_agent, make_pool


def _terminate_my_connection() -> None:
    """PostgreSQL ends this test's connection, as a restart or a failover does."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    params = connection.settings_dict
    with psycopg.connect(host=params["HOST"], dbname=params["NAME"], user=params["USER"], autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture
def dropped():
    yield _terminate_my_connection
    connection.close()  # what Django does at the end of a request: the pool discards it


@pytest.mark.django_db(transaction=True)
def test_the_api_answers_503_with_retry_after(api, dropped):
    assert api.get("/api/v1/workspaces/").status_code == 200
    dropped()
    response = api.get("/api/v1/workspaces/")
    assert response.status_code == 503
    assert response["Retry-After"] == "3"
    assert response.json() == {"detail": "The database is unavailable (restarting or unreachable); retry in a few seconds."}


@pytest.mark.django_db(transaction=True)
def test_the_agent_api_answers_503(dropped):
    pool, _ = make_pool()
    _agent, token = make_agent(pool=pool)
    dropped()
    response = Client().post("/agent/v1/heartbeat", data="{}", content_type="application/json",
                             headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert response["Retry-After"]
    assert "database is unavailable" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_a_page_answers_503_in_plain_text(alice, dropped):
    client = Client()
    client.force_login(alice)
    assert client.get("/").status_code == 200
    dropped()
    response = client.get("/")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/plain")
    assert b"database is unavailable" in response.content


def test_a_querys_own_failure_is_not_an_outage():
    def wrapped(cause: Exception) -> OperationalError:
        exc = OperationalError(str(cause))
        exc.__cause__ = cause
        return exc

    assert not database_unavailable(wrapped(psycopg.errors.DeadlockDetected("deadlock detected")))
    assert not database_unavailable(wrapped(psycopg.errors.LockNotAvailable("could not obtain lock")))
    assert database_unavailable(wrapped(psycopg.errors.AdminShutdown("terminating connection")))
    assert database_unavailable(wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")))
    assert database_unavailable(wrapped(psycopg.OperationalError("server closed the connection unexpectedly")))
    assert not database_unavailable(ValueError("not a database error"))
