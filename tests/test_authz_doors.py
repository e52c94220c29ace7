"""Every door of the matrix (tests/test_authz_matrix.py's RULES) answers each of the four
users as their level allows: some 550 requests, each its own test.

The world (users, pool, workspaces, grants, a run, a variable, the users' sessions and
tokens) is built once for the module, inside a transaction rolled back at its end; each case
runs in a savepoint of it (pytest-django's `db`), so what a case writes is gone before the
next, and gets clients of its own (a logout in one case logs nobody out in the next). The
matrix's transactional tests (websockets, a state lock seen from another connection) stay in
tests/test_authz_matrix.py: they cannot run inside an open transaction."""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from django.test import Client

from tests.test_authz_matrix import CASES, RULES, USERS, World, build_world, with_clients

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), transaction.atomic():
        world = build_world()
        sessions = {}
        for name, user in world.users.items():
            client = Client()
            client.force_login(user)
            sessions[name] = client.session.session_key
        yield world, sessions
        transaction.set_rollback(True)


@pytest.fixture
def world(shared_world, db) -> World:
    world, sessions = shared_world
    return with_clients(world, sessions)


@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}[{i}]" for n, i in CASES])
@pytest.mark.parametrize("user", USERS)
def test_it_answers_each_user_as_their_level_allows(world, name, index, user):
    case = RULES[name][index]
    client = world.api[user] if case.api else world.clients[user]
    path = case.path(world, user)
    body = case.body(world, user) if case.body else None
    if case.api:
        response = client.generic(case.method, path, json.dumps(body) if body is not None else "",
                                  content_type="application/json")
    elif case.method == "POST":
        response = client.post(path, body or {})
    else:
        response = client.get(path)
    assert response.status_code == case.expect[user], (
        f"{user} {case.method} {path}: {response.status_code}, expected {case.expect[user]}: "
        f"{response.content[:300]!r}"
    )
