"""Terraform's http state backend at /api/v1/workspaces/<id>/state, through the Django test
client, the way Terraform's http backend client talks to it (Basic auth, LOCK/UNLOCK with
lock-info JSON, POST ?ID=<lock id>)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from agents_app.models import hash_token
from agents_app.protocol import JobKind, JobStatus
from tasks_app.dispatch.models import Job
from tasks_app.models import AuditEvent, StateLock, StateVersion, Task, Workspace
from tasks_app.services.state import StateLockedError, state_lock
from tasks_app.states import Operation, RunStatus
from tests.factories import make_token, make_workspace

pytestmark = pytest.mark.django_db


def basic(password: str, username: str = "terraform") -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def state_url(workspace: Workspace) -> str:
    return f"/api/v1/workspaces/{workspace.id}/state"


def lock_url(workspace: Workspace) -> str:
    return f"/api/v1/workspaces/{workspace.id}/state/lock"


def lock_info(lock_id: str, who: str = "alice@laptop") -> dict[str, Any]:
    # The shape Terraform's statemgr.LockInfo marshals to.
    return {
        "ID": lock_id,
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": who,
        "Version": "1.11.4",
        "Created": "2025-01-01T00:00:00.000000Z",
        "Path": "",
    }


def tf_state(serial: int, lineage: str, greeting: str = "hello") -> bytes:
    return json.dumps(
        {
            "version": 4,
            "terraform_version": "1.11.4",
            "serial": serial,
            "lineage": lineage,
            "outputs": {"greeting": {"value": greeting, "type": "string"}},
            "resources": [],
            "check_results": None,
        },
        indent=2,
    ).encode()


class StateBackend:
    """A tiny Terraform http backend client over Django's test client."""

    def __init__(self, client: Client, workspace: Workspace, password: str) -> None:
        self.client = client
        self.workspace = workspace
        self.auth = basic(password)

    def get(self):
        return self.client.get(state_url(self.workspace), HTTP_AUTHORIZATION=self.auth)

    def push(self, data: bytes, lock_id: str | None = None):
        url = state_url(self.workspace) + (f"?ID={lock_id}" if lock_id else "")
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        return self.client.generic(
            "POST", url, data=data, content_type="application/json", HTTP_AUTHORIZATION=self.auth, HTTP_CONTENT_MD5=md5
        )

    def lock(self, info: dict[str, Any]):
        return self.client.generic(
            "LOCK", lock_url(self.workspace), data=json.dumps(info), content_type="application/json",
            HTTP_AUTHORIZATION=self.auth,
        )

    def unlock(self, info: dict[str, Any] | None):
        body = json.dumps(info) if info is not None else ""
        return self.client.generic(
            "UNLOCK", lock_url(self.workspace), data=body, content_type="application/json",
            HTTP_AUTHORIZATION=self.auth,
        )


@pytest.fixture
def alice_token(alice: User) -> str:
    return make_token(alice)


@pytest.fixture
def backend(client: Client, workspace: Workspace, alice_token: str) -> StateBackend:
    return StateBackend(client, workspace, alice_token)


def make_job(workspace: Workspace, *, kind: str = JobKind.APPLY, status: str = JobStatus.RUNNING) -> tuple[Job, str]:
    """A job of a new run of `workspace`, with its agent credential (only the hash is stored)."""
    task = Task.objects.create(
        workspace=workspace,
        configuration_version=workspace.configuration_versions.first(),
        operation=Operation.PLAN_AND_APPLY,
        status=RunStatus.APPLYING if kind == JobKind.APPLY else RunStatus.PLANNING,
    )
    credential = f"job-{uuid.uuid4().hex}"
    job = Job.objects.create(
        task=task, pool=workspace.pool, kind=kind, status=status, credential_hash=hash_token(credential)
    )
    return job, credential


def test_it_answers_no_content_before_any_state_exists(backend: StateBackend) -> None:
    response = backend.get()

    assert response.status_code == 204
    assert response.content == b""


def test_it_returns_the_pushed_state_and_keeps_it_encrypted(backend: StateBackend, workspace: Workspace, alice: User) -> None:
    lineage = str(uuid.uuid4())
    state = tf_state(1, lineage, greeting="a-greeting-that-is-only-in-the-state")

    pushed = backend.push(state)
    pulled = backend.get()

    assert pushed.status_code == 201
    assert pushed.json()["serial"] == 1
    assert pulled.status_code == 200
    assert pulled.content == state
    version = StateVersion.objects.get(workspace=workspace)
    assert (version.serial, version.lineage, version.size) == (1, lineage, len(state))
    assert version.sha256 == hashlib.sha256(state).hexdigest()
    assert version.created_by == alice
    raw = bytes(version.encrypted_data)
    assert b"a-greeting-that-is-only-in-the-state" not in raw
    assert lineage.encode() not in raw


def test_it_serves_the_newest_serial(backend: StateBackend) -> None:
    lineage = str(uuid.uuid4())
    backend.push(tf_state(1, lineage, greeting="first"))
    backend.push(tf_state(2, lineage, greeting="second"))

    assert json.loads(backend.get().content)["outputs"]["greeting"]["value"] == "second"


def test_it_refuses_a_second_lock_with_423_and_the_holders_info(backend: StateBackend) -> None:
    holder = lock_info("lock-1", who="alice@laptop")

    first = backend.lock(holder)
    second = backend.lock(lock_info("lock-2", who="bob@desktop"))

    assert first.status_code == 200
    assert second.status_code == 423
    # Terraform parses this body as the holder's LockInfo to report who holds the lock.
    assert second.json() == holder


def test_it_accepts_a_repeated_lock_with_the_holders_own_id(backend: StateBackend) -> None:
    backend.lock(lock_info("lock-1"))

    again = backend.lock(lock_info("lock-1"))

    assert again.status_code == 200


def test_it_refuses_unlock_with_the_wrong_id_and_keeps_the_lock(backend: StateBackend, workspace: Workspace) -> None:
    backend.lock(lock_info("lock-1"))

    response = backend.unlock(lock_info("not-the-holder"))

    assert response.status_code == 409
    assert "lock-1" in response.json()["detail"]
    assert StateLock.objects.get(workspace=workspace).lock_id == "lock-1"


def test_it_lets_the_holder_unlock_and_then_another_lock(backend: StateBackend, workspace: Workspace) -> None:
    backend.lock(lock_info("lock-1"))

    unlocked = backend.unlock(lock_info("lock-1"))
    relocked = backend.lock(lock_info("lock-2"))

    assert unlocked.status_code == 200
    assert relocked.status_code == 200
    assert StateLock.objects.get(workspace=workspace).lock_id == "lock-2"


def test_it_treats_an_unlock_of_an_unlocked_state_as_done(backend: StateBackend) -> None:
    response = backend.unlock(lock_info("lock-1"))

    assert response.status_code == 200


def test_it_force_unlocks_on_an_unlock_without_lock_info(backend: StateBackend, workspace: Workspace) -> None:
    backend.lock(lock_info("stuck-lock"))

    response = backend.unlock(None)

    assert response.status_code == 200
    assert not StateLock.objects.filter(workspace=workspace).exists()
    event = AuditEvent.objects.filter(action="state.force_unlock").get()
    assert event.data["id"] == "stuck-lock"


def test_it_accepts_lock_and_unlock_on_the_state_address_too(client: Client, workspace: Workspace, alice_token: str) -> None:
    auth = basic(alice_token)
    url = state_url(workspace)

    locked = client.generic("LOCK", url, data=json.dumps(lock_info("lock-1")), HTTP_AUTHORIZATION=auth)
    unlocked = client.generic("UNLOCK", url, data=json.dumps(lock_info("lock-1")), HTTP_AUTHORIZATION=auth)

    assert (locked.status_code, unlocked.status_code) == (200, 200)


def test_it_records_lock_and_unlock_in_the_audit_log(backend: StateBackend, workspace: Workspace, alice: User) -> None:
    backend.lock(lock_info("lock-1", who="alice@laptop"))
    backend.unlock(lock_info("lock-1"))

    events = list(AuditEvent.objects.filter(object_type="workspace", object_id=str(workspace.id)).order_by("id"))
    assert [e.action for e in events] == ["state.lock", "state.unlock"]
    assert all(e.actor == alice for e in events)
    assert events[0].data["who"] == "alice@laptop"
    assert events[0].data["id"] == "lock-1"


def test_it_refuses_a_push_while_another_id_holds_the_lock(backend: StateBackend, workspace: Workspace) -> None:
    holder = lock_info("lock-1", who="agent-7")
    backend.lock(holder)
    state = tf_state(1, str(uuid.uuid4()))

    other_id = backend.push(state, lock_id="lock-2")
    no_id = backend.push(state)
    holder_push = backend.push(state, lock_id="lock-1")

    assert other_id.status_code == 423
    assert other_id.json() == holder
    assert no_id.status_code == 423
    assert holder_push.status_code == 201
    assert StateVersion.objects.filter(workspace=workspace).count() == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"lineage": "abc"}).encode(), '"serial"'),
        (json.dumps({"serial": "3", "lineage": "abc"}).encode(), '"serial"'),
        (json.dumps({"serial": 3}).encode(), '"lineage"'),
        (json.dumps({"serial": 3, "lineage": 42}).encode(), '"lineage"'),
    ],
)
def test_it_rejects_a_push_that_is_not_a_state_and_says_why(
    backend: StateBackend, workspace: Workspace, body: bytes, named: str
) -> None:
    response = backend.push(body)

    assert response.status_code == 400
    assert named in response.json()["detail"]
    assert not StateVersion.objects.filter(workspace=workspace).exists()


def test_it_rejects_a_body_that_does_not_match_its_content_md5(backend: StateBackend, workspace: Workspace) -> None:
    response = backend.client.generic(
        "POST", state_url(workspace), data=tf_state(1, "abc"), content_type="application/json",
        HTTP_AUTHORIZATION=backend.auth, HTTP_CONTENT_MD5=base64.b64encode(hashlib.md5(b"other").digest()).decode(),
    )

    assert response.status_code == 400
    assert "Content-MD5" in response.json()["detail"]


def test_it_rejects_a_state_over_the_size_limit(backend: StateBackend, workspace: Workspace, settings) -> None:
    state = tf_state(1, str(uuid.uuid4()))
    settings.IAC_MAX_STATE_BYTES = len(state) - 1

    response = backend.push(state)

    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert not StateVersion.objects.filter(workspace=workspace).exists()


def test_it_refuses_other_content_under_an_existing_serial(backend: StateBackend, workspace: Workspace) -> None:
    lineage = str(uuid.uuid4())
    first = tf_state(5, lineage, greeting="mine")
    backend.push(first)

    retry = backend.push(first)
    conflict = backend.push(tf_state(5, lineage, greeting="theirs"))

    assert retry.status_code == 200  # a byte-identical retry is fine
    assert conflict.status_code == 409
    assert "serial 5" in conflict.json()["detail"]
    assert backend.get().content == first
    assert StateVersion.objects.filter(workspace=workspace).count() == 1


def test_it_refuses_a_state_of_another_lineage(backend: StateBackend) -> None:
    backend.push(tf_state(1, "lineage-a"))

    response = backend.push(tf_state(2, "lineage-b"))

    assert response.status_code == 409
    assert "lineage" in response.json()["detail"]


def test_it_refuses_to_go_back_to_an_older_serial(backend: StateBackend) -> None:
    backend.push(tf_state(3, "lineage-a"))

    response = backend.push(tf_state(2, "lineage-a"))

    assert response.status_code == 409
    assert "older" in response.json()["detail"]


def test_it_asks_for_basic_auth_without_credentials(client: Client, workspace: Workspace) -> None:
    response = client.get(state_url(workspace))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="iac-state"'


def test_it_rejects_an_unknown_token(client: Client, workspace: Workspace) -> None:
    response = client.get(state_url(workspace), HTTP_AUTHORIZATION=basic("not-a-token"))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="iac-state"'
    assert response.json()["detail"]


def test_it_answers_404_for_an_unknown_workspace(client: Client, alice_token: str) -> None:
    response = client.get("/api/v1/workspaces/999999/state", HTTP_AUTHORIZATION=basic(alice_token))

    assert response.status_code == 404
    assert "999999" in response.json()["detail"]


def test_it_lets_a_running_apply_job_push_and_links_the_state_to_its_run(
    client: Client, workspace: Workspace
) -> None:
    job, credential = make_job(workspace)
    agent = StateBackend(client, workspace, credential)

    locked = agent.lock(lock_info("agent-lock", who="agent"))
    pushed = agent.push(tf_state(1, "lineage-a"), lock_id="agent-lock")
    unlocked = agent.unlock(lock_info("agent-lock"))

    assert (locked.status_code, pushed.status_code, unlocked.status_code) == (200, 201, 200)
    version = StateVersion.objects.get(workspace=workspace)
    assert version.task == job.task
    assert version.created_by is None
    assert AuditEvent.objects.filter(action="state.lock", actor_label__contains=f"job {job.id}").exists()


def test_it_rejects_the_credential_of_a_finished_job(client: Client, workspace: Workspace) -> None:
    _job, credential = make_job(workspace, status=JobStatus.SUCCEEDED)

    response = client.get(state_url(workspace), HTTP_AUTHORIZATION=basic(credential))

    assert response.status_code == 401


def test_it_forbids_a_job_credential_on_another_workspace(client: Client, workspace: Workspace) -> None:
    _job, credential = make_job(workspace)
    other = make_workspace(pool=workspace.pool, files={"main.tf": "# other"})

    response = client.get(state_url(other), HTTP_AUTHORIZATION=basic(credential))

    # To a job credential, other workspaces do not exist.
    assert response.status_code == 404
    assert f"workspace {other.id} does not exist" in response.json()["detail"]


def test_it_forbids_a_plan_job_to_write_state(client: Client, workspace: Workspace) -> None:
    _job, credential = make_job(workspace, kind=JobKind.PLAN)

    response = StateBackend(client, workspace, credential).push(tf_state(1, "lineage-a"))

    assert response.status_code == 403
    assert not StateVersion.objects.filter(workspace=workspace).exists()


def test_it_refuses_other_http_methods(backend: StateBackend, workspace: Workspace) -> None:
    response = backend.client.delete(state_url(workspace), HTTP_AUTHORIZATION=backend.auth)

    assert response.status_code == 405
    assert "LOCK" in response["Allow"]


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_lock_to_exactly_one_of_two_concurrent_lockers(workspace: Workspace, alice: User) -> None:
    # Each thread has its own database connection: a real race between two transactions.
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def take(lock_id: str) -> None:
        try:
            barrier.wait()
            state_lock(workspace=workspace, info=lock_info(lock_id), actor=alice)
            outcomes[lock_id] = "won"
        except StateLockedError as exc:
            outcomes[lock_id] = f"refused, held by {exc.info['ID']}"
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(f"lock-{n}",)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winner = StateLock.objects.get(workspace=workspace).lock_id
    loser = "lock-2" if winner == "lock-1" else "lock-1"
    assert outcomes == {winner: "won", loser: f"refused, held by {winner}"}


def test_a_retry_of_an_older_serial_is_still_answered_as_a_retry(backend: StateBackend, workspace: Workspace) -> None:
    """Serial 5, then 6; a lost answer makes the client send 5 again: 200, nothing stored."""
    lineage = str(uuid.uuid4())
    five = tf_state(5, lineage, greeting="five")
    backend.push(five)
    backend.push(tf_state(6, lineage, greeting="six"))

    assert backend.push(five).status_code == 200
    other = backend.push(tf_state(5, lineage, greeting="other"))
    assert other.status_code == 409 and "serial 5" in other.json()["detail"]
    assert StateVersion.objects.filter(workspace=workspace).count() == 2


def test_a_push_of_a_new_serial_reads_the_versions_once_and_not_their_bytes(backend: StateBackend) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    lineage = str(uuid.uuid4())
    backend.push(tf_state(1, lineage))
    with CaptureQueriesContext(connection) as push:
        assert backend.push(tf_state(2, lineage)).status_code == 201
    reads = [q["sql"] for q in push.captured_queries
             if q["sql"].startswith("SELECT") and 'FROM "tasks_app_stateversion"' in q["sql"]]
    assert len(reads) == 1 and '"encrypted_data"' not in reads[0]
