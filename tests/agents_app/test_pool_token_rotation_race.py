"""Rotating a pool's token while agents register with the old one: every registration either
finishes first (and its agent's token dies with the rotation) or loses (401, saying why).
No agent comes out of the race with a working token from the old pool token.

Real PostgreSQL, one connection per thread: the registrations go through the agent API, the
rotation through the admin's action, both in their own transactions."""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from agents_app.models import Agent, AgentPool
from agents_app.protocol import PROTOCOL_VERSION
from tasks_app.models import AuditEvent
from tests.factories import make_pool

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 40
REGISTRATIONS = 3  # per round, each starting a little later than the one before


def _register(pool_token: str, name: str, delay: float, out: dict) -> None:
    try:
        time.sleep(delay)  # spreads the registrations over the rotation; not an assertion
        out[name] = Client().post(
            "/agent/v1/register", {"name": name, "protocol_version": PROTOCOL_VERSION},
            content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {pool_token}",
        )
    finally:
        connection.close()


def _rotate(admin: Client, pool: AgentPool, out: dict) -> None:
    try:
        out["rotate"] = admin.post("/admin/agents_app/agentpool/",
                                   {"action": "rotate_token", "_selected_action": [pool.id]})
    finally:
        connection.close()


def test_it_leaves_no_working_agent_token_from_a_rotated_pool_token():
    alice = User.objects.create_user("alice", password="pw-alice-1", is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(alice)
    registered = refused = 0
    for round_ in range(ROUNDS):
        pool, token = make_pool()
        out: dict = {}
        threads = [threading.Thread(target=_rotate, args=(admin, pool, out))] + [
            threading.Thread(target=_register, args=(token, f"r{round_}-{i}", (round_ % 10 + 4 * i) / 1000, out))
            for i in range(REGISTRATIONS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert out["rotate"].status_code == 302, out["rotate"].content
        for i in range(REGISTRATIONS):
            reply = out[f"r{round_}-{i}"]
            if reply.status_code == 201:
                registered += 1
                agent_token = reply.json()["token"]
                heartbeat = Client().post("/agent/v1/heartbeat", {}, content_type="application/json",
                                          HTTP_AUTHORIZATION=f"Bearer {agent_token}")
                assert heartbeat.status_code == 401, (
                    f"round {round_}: an agent registered with the old pool token kept a working token"
                )
            else:
                refused += 1
                assert reply.status_code == 401, reply.content
                detail = reply.json()["detail"]
                assert "was rotated while this agent registered" in detail or "unknown" in detail, detail
        assert not Agent.objects.filter(pool=pool, status="online").exists(), f"round {round_}"
        assert AuditEvent.objects.filter(action="pool.rotate_token", object_id=str(pool.id)).count() == 1
    # Both outcomes happened: the race was run, not just one side of it.
    assert registered and refused, (registered, refused)
