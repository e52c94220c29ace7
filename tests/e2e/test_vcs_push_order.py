"""Pushes whose webhooks arrive out of order: the forge sends each push's delivery on its
own, and a late one must not undo a newer commit's run. End to end as
tests/vcs/test_runs_from_git.py (a real git server, GitHub's signed webhooks, real agents)."""

from __future__ import annotations

import pytest

from tasks_app.models import Workspace
from tasks_app.vcs.models import WebhookDelivery
from tests.live import wait_for
from tests.vcs.forge import push_payload, send
from tests.vcs.test_runs_from_git import CHANGED_TF, REPO, vcs  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_late_webhook_of_an_older_push_does_not_undo_the_newer_commits_run(vcs):  # noqa: F811
    vcs.s.agent("a1")
    first = vcs.repo.commit({"infra/main.tf": CHANGED_TF}, "First change")
    second = vcs.repo.commit({"infra/main.tf": CHANGED_TF.replace("hello again", "hello thrice")}, "Second change")
    files = {"modified": ["infra/main.tf"]}
    # The second push's webhook arrives first ...
    send(vcs.user.base, vcs.connection, vcs.secret, "push",
         push_payload(REPO, before=first, after=second, message="Second change", files=files))
    newer = vcs.run_for(second)
    vcs.user.wait(newer["id"], "apply_pending")
    # ... then the first push's, late.
    late = send(vcs.user.base, vcs.connection, vcs.secret, "push",
                push_payload(REPO, before=vcs.base_sha, after=first, message="First change", files=files))
    assert late.status_code == 202
    delivery = wait_for(lambda: WebhookDelivery.objects.filter(processed_at__isnull=False, payload__after=first).first(),
                        60, "the late delivery to be processed")
    assert f"superseded: {first[:7]} is older than {second[:7]}" in delivery.result
    assert [r["commit"]["sha"] for r in vcs.runs()] == [second]
    assert vcs.user.run(newer["id"])["status"] == "apply_pending"
    # The Confirm dialog's "the branch has a newer commit" compares with this: still the newer.
    assert Workspace.objects.get(id=vcs.ws["id"]).vcs_last_sha == second
