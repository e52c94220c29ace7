"""The pool page as a site admin sees it: agents, slots, the autoscaler's decisions, freeze
windows with "Lift now", and the settings form. Everyone else is refused."""

from __future__ import annotations

from datetime import timedelta
from html import unescape

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents_app.models import AgentPool, FreezeWindow, ScalingDecision
from agents_app.services.freeze import pool_frozen_until
from tasks_app.models import AuditEvent
from tests.factories import make_agent, make_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_alice(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def client_bob(db) -> Client:
    # A member of a team: he runs workspaces, he does not manage pools.
    client = Client()
    client.force_login(User.objects.create_user("bob", password="bob-password-1"))
    return client


def text(response) -> str:
    return unescape(response.content.decode())


def freeze_now(pool: AgentPool, name: str = "release freeze") -> FreezeWindow:
    now = timezone.now()
    return FreezeWindow.objects.create(pool=pool, name=name, kind="one_off", starts_at=now - timedelta(hours=1),
                                       ends_at=now + timedelta(hours=2))


def test_it_refuses_the_pool_pages_to_non_admins(client_bob, pool):
    assert client_bob.get(reverse("pool-list")).status_code == 403
    assert client_bob.get(reverse("pool-detail", args=[pool.id])).status_code == 403


def test_it_shows_agents_slots_and_the_latest_decisions_reason(client_alice, pool):
    agent, _ = make_agent(pool=pool, name="agent-green", slots=2, terraform_version="1.15.5")
    ScalingDecision.objects.create(pool=pool, action="up", pods_before=0, desired=1, demand=1,
                                   pods_created=["p-abc"], reason="1 queued plan: 1 pod(s) wanted, 0 present")
    ScalingDecision.objects.create(pool=pool, action="none", pods_before=1, desired=1, demand=1,
                                   reason="1 running: 1 pod(s), as wanted")
    page = text(client_alice.get(reverse("pool-detail", args=[pool.id])))
    assert "agent-green" in page and "online" in page and "last heartbeat" in page
    assert page.count('class="slot slot-idle"') == 2
    assert "1 queued plan: 1 pod(s) wanted, 0 present" in page  # a decision that acted, in the table
    assert "1 running: 1 pod(s), as wanted" in page  # the latest one, whatever it did
    assert 'ws-connect="/ws/pools/%d/"' % pool.id in page


def test_it_shows_a_frozen_pools_window_with_a_lift_button(client_alice, pool):
    window = freeze_now(pool)
    page = text(client_alice.get(reverse("pool-detail", args=[pool.id])))
    until = timezone.localtime(window.ends_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f"frozen until {until}" in page and "(release freeze)" in page
    assert reverse("pool-freeze-lift", args=[pool.id, window.id]) in page
    assert "Lift now" in page


def test_it_lifts_a_freeze_now_and_records_who(client_alice, alice, pool):
    window = freeze_now(pool)
    response = client_alice.post(reverse("pool-freeze-lift", args=[pool.id, window.id]), {"reason": "hotfix"})
    assert response.status_code == 302
    window.refresh_from_db()
    assert window.lifted_by == alice and window.lift_reason == "hotfix" and window.lifted_at is not None
    assert pool_frozen_until(pool) is None
    assert AuditEvent.objects.filter(action="freeze_window.lift", actor=alice).exists()
    page = text(client_alice.get(reverse("pool-detail", args=[pool.id])))
    assert "not frozen" in page and "by alice: hotfix" in page


def test_it_refuses_a_lift_to_non_admins_and_changes_nothing(client_bob, pool):
    window = freeze_now(pool)
    response = client_bob.post(reverse("pool-freeze-lift", args=[pool.id, window.id]), {"reason": "mine"})
    assert response.status_code == 403
    window.refresh_from_db()
    assert window.lifted_at is None
    assert pool_frozen_until(pool) is not None


def test_it_refuses_a_lift_without_a_reason_or_of_another_pools_window(client_alice, pool):
    window = freeze_now(pool)
    response = client_alice.post(reverse("pool-freeze-lift", args=[pool.id, window.id]), {"reason": "  "})
    assert response.status_code == 400
    assert "lifting a freeze window needs a reason" in text(response)
    other, _ = make_pool()
    assert client_alice.post(reverse("pool-freeze-lift", args=[other.id, window.id]), {"reason": "x"}).status_code == 404
    assert client_alice.get(reverse("pool-freeze-lift", args=[pool.id, window.id])).status_code == 405
    window.refresh_from_db()
    assert window.lifted_at is None


def test_it_refuses_to_lift_a_window_that_is_not_active(client_alice, pool):
    later = FreezeWindow.objects.create(pool=pool, name="later", kind="one_off",
                                        starts_at=timezone.now() + timedelta(days=1),
                                        ends_at=timezone.now() + timedelta(days=2))
    response = client_alice.post(reverse("pool-freeze-lift", args=[pool.id, later.id]), {"reason": "why not"})
    assert response.status_code == 409
    assert "is not active now" in text(response)


def test_it_saves_pool_settings_from_the_form(client_alice, alice, pool):
    form = {"min_replicas": 0, "max_replicas": 4, "slots_per_pod": 2, "warm_apply": "on",
            "scale_up_delay_seconds": 5, "scale_down_delay_seconds": 60, "cooldown_seconds": 30,
            "warmup_expire_seconds": 600}
    response = client_alice.post(reverse("pool-settings", args=[pool.id]), form)
    assert response.status_code == 302
    pool.refresh_from_db()
    assert (pool.min_replicas, pool.max_replicas, pool.slots_per_pod, pool.warm_apply) == (0, 4, 2, True)
    assert AuditEvent.objects.filter(action="pool.update", actor=alice).exists()

    # Bad input: a clear 400 naming the problem, and nothing changes.
    bad = {**form, "min_replicas": 9, "max_replicas": 3, "warm_apply": ""}
    response = client_alice.post(reverse("pool-settings", args=[pool.id]), bad)
    assert response.status_code == 400
    assert "min_replicas (9) must not exceed max_replicas (3)" in text(response)
    pool.refresh_from_db()
    assert (pool.min_replicas, pool.max_replicas, pool.warm_apply) == (0, 4, True)


def test_it_refuses_pool_settings_to_non_admins(client_bob, pool):
    before = pool.max_replicas
    response = client_bob.post(reverse("pool-settings", args=[pool.id]), {"max_replicas": 99})
    assert response.status_code == 403
    pool.refresh_from_db()
    assert pool.max_replicas == before


def test_it_says_relative_times_to_the_second():
    from agents_app.templatetags.pool_times import ago, span, within

    now = timezone.now()
    assert [span(s) for s in (0, 4, 59, 60, 3599, 3600, 5400, 86400, 90000)] == [
        "0 s", "4 s", "59 s", "1 min", "59 min", "1 h", "1 h 30 min", "1 d", "1 d 1 h"]
    assert ago(now - timedelta(seconds=4), now) == "4 s ago"
    assert within(now + timedelta(days=7), now) == "in 7 d"
    assert ago(None) == ""
