from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tests.factories import DEMO_MAIN_TF, make_pool, make_token, make_workspace


@pytest.fixture(autouse=True)
def fast_password_hashing(request, settings):
    """Tests create many users; the production hasher is slow on purpose. Not for tests that
    start the real servers: those verify passwords with the production hashers."""
    if request.node.get_closest_marker("e2e") or request.node.get_closest_marker("browser"):
        return
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db) -> User:
    """An admin: manages pools, queues runs, confirms applies."""
    return User.objects.create_user("alice", password="alice-password-1", is_staff=True, is_superuser=True)


@pytest.fixture
def charlie(db) -> User:
    """An outsider with an account but no rights beyond reading."""
    return User.objects.create_user("charlie", password="charlie-password-1")


@pytest.fixture
def api(alice) -> APIClient:
    client = APIClient()
    token = make_token(alice)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def pool(db):
    pool, _token = make_pool()
    return pool


@pytest.fixture
def setup(db):
    """A pool (with its token) and a workspace with the demo configuration."""
    pool, token = make_pool()
    ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    return pool, token, ws


@pytest.fixture
def workspace(pool, tmp_path):
    from tests.factories import DEMO_MAIN_TF

    ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    return ws


from tests.live import live_url, scenario, start_agent, user  # noqa: E402,F401  (fixtures)

# Rows every test may rely on, written by the migrations and never by a test: kept by the
# teardown below (with them kept, Django's post_migrate re-creation is not needed either).
KEPT_TABLES = {"django_content_type", "auth_permission"}
_tables_to_empty: dict[str, list[str]] = {}


def _empty_tables(db_name: str) -> None:
    """Empty every model table but KEPT_TABLES, in one transaction, by DELETE. Django's flush
    TRUNCATEs all ~70 tables (a new file each, and an ACCESS EXCLUSIVE lock on each) and then
    re-creates the content types and permissions: a tenth of a second or more per test, for
    a thousand transactional tests. DELETE of the few rows a test wrote takes milliseconds;
    Django's foreign keys are DEFERRABLE INITIALLY DEFERRED, so the order does not matter.
    Sequences go on, as they do after Django's flush (no RESTART IDENTITY)."""
    from django.db import connections, transaction

    connection = connections[db_name]
    if db_name not in _tables_to_empty:
        names = connection.introspection.django_table_names(only_existing=True, include_views=False)
        _tables_to_empty[db_name] = sorted(set(names) - KEPT_TABLES)
    with transaction.atomic(using=db_name), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        for table in _tables_to_empty[db_name]:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")


def _teardown_by_delete_retrying_deadlocks() -> None:
    """The transactional tests' teardown (see _empty_tables). End-to-end tests empty the
    database while the live server's sweep and long-polls may still hold row locks (the
    agents have just been stopped): that can deadlock with them; PostgreSQL aborts one side,
    and when that is the teardown, it is simply run again."""
    from django.db import OperationalError
    from django.test import testcases

    def teardown(self) -> None:
        for db_name in self._databases_names(include_mirrors=False):
            for attempt in range(5):
                try:
                    _empty_tables(db_name)
                    break
                except OperationalError as exc:
                    if "deadlock detected" not in str(exc) or attempt == 4:
                        raise
                    time.sleep(0.2)

    testcases.TransactionTestCase._fixture_teardown = teardown


_teardown_by_delete_retrying_deadlocks()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, plus a clean end: connections that outlive the tests
    (pooled ones, those of test threads, a live server's last requests) would keep the test
    database from being dropped."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    if hasattr(connection, "close_pool"):
        connection.close_pool()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests without the session's live platform first, then those with it (`live_url`, which
    `scenario` uses); in each part the longest tests first (a stable sort: the rest keep their
    order). Why: once a test of an xdist worker starts the live platform, its Celery sweep runs
    every second on that worker's test database until the session ends, and takes the fake
    agents of the tests after it offline, or marks one offline before the test's own sweep does;
    and pytest-xdist hands tests out one by one in this order, so a minute-long test taken last
    would leave the other workers idle while it runs."""
    def rank(item) -> tuple[int, int]:
        live = "live_url" in item.fixturenames
        return (1 if live else 0, 0 if item.get_closest_marker("longest") else 1)

    items.sort(key=rank)
