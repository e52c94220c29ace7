from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import make_pool, make_workspace


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
    token, _ = Token.objects.get_or_create(user=alice)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def pool(db):
    pool, _token = make_pool()
    return pool


@pytest.fixture
def workspace(pool, tmp_path):
    from tests.factories import DEMO_MAIN_TF

    ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    return ws


from tests.live import live_url, scenario, start_agent, user  # noqa: E402,F401  (fixtures)
