"""Terraform state of a workspace: versions (encrypted at rest) and the state lock.

These services back Terraform's `http` state backend (tasks_app/state_backend.py), used by
the agents' terraform and by a person's own `terraform` CLI. Invariants:

- At most one state lock per workspace (StateLock is one-to-one with Workspace). Every
  lock, unlock and push first takes a row lock on the workspace (`select_for_update`), so
  these operations on one workspace run one at a time: two concurrent LOCKs cannot both
  see "unlocked", and a push cannot slip in between an unlock and someone else's lock.
- A state version's serial is unique per workspace and its bytes never change. A push of an
  existing serial is accepted only if it is byte-identical (an HTTP retry after a lost
  response); anything else means two writers diverged and is refused, never overwritten.
- A lock belongs to whoever took it (StateLock.job or StateLock.user): only that caller may
  lock again, push under or unlock it. Its ID is no secret (a refused LOCK shows it, as
  Terraform expects), so the ID alone proves nothing; anyone else needs `admin` and a
  force-unlock, which the audit log records as such.
- A push never goes backwards (lower serial) or sideways (other lineage): Terraform's own
  checks can be overridden with `state push -force`, the server's cannot.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.db import transaction

from iacplatform import crypto
from iacplatform.errors import Conflict, Invalid
from tasks_app.models import StateLock, StateVersion, Task, Workspace
from tasks_app.services.audit import audit_record

# StateLock.lock_id / StateVersion.lineage column sizes.
MAX_LOCK_ID_LENGTH = 200
MAX_LINEAGE_LENGTH = 100


class StateInvalidError(Invalid):
    """The request body is not what the protocol expects (HTTP 400)."""


class StateTooLargeError(StateInvalidError):
    """The state is bigger than settings.IAC_MAX_STATE_BYTES (HTTP 413)."""

    status = 413


class StateLockedError(Conflict):
    """The state is locked by someone else (HTTP 423). `info` is the holder's lock info, as
    Terraform sent it when it took the lock, so the refused client can say who holds it."""

    status = 423

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(f"the state is locked (lock ID {info.get('ID', '?')})")
        self.info = info


class StateConflictError(Conflict):
    """The request contradicts the stored state or lock (HTTP 409)."""

    def __init__(self, message: str, *, lock_info: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.lock_info = lock_info


def _lock_workspace(workspace: Workspace) -> Workspace:
    """Row-lock the workspace for the rest of the transaction: the serialisation point for
    everything that reads and then changes the workspace's state or lock."""
    return Workspace.objects.select_for_update(no_key=True).get(pk=workspace.pk)


def _lock_summary(info: dict[str, Any]) -> dict[str, Any]:
    # What the audit log keeps of Terraform's lock info (ID, Operation, Who, Version, Created, Path).
    return {key.lower(): info.get(key, "") for key in ("ID", "Operation", "Who", "Version", "Created", "Path")}


def _user(actor: Any) -> Any:
    """The user behind `actor`, or None (a job's label, the system)."""
    return actor if getattr(actor, "is_authenticated", False) else None


def _held_by(lock: StateLock, *, job: Any, user: Any) -> bool:
    """Whether the caller (a job's credential, else a user's token) is the lock's holder.

    The lock ID proves nothing: a refused LOCK answers with the holder's info, ID included,
    to anyone who may lock. A lock without a holder (its taker is unknown or was deleted) is
    nobody's: only a force-unlock releases it."""
    if lock.job_id is not None:
        return job is not None and job.id == lock.job_id
    if lock.user_id is not None:
        return job is None and user is not None and user.pk == lock.user_id
    return False


def _holder_label(lock: StateLock) -> str:
    if lock.job_id is not None:
        return f"job {lock.job_id}"
    if lock.user_id is not None:
        return f"user '{lock.user}'"
    return "an unknown holder"


def state_lock(*, workspace: Workspace, info: dict[str, Any], actor: Any, job: Any = None) -> StateLock:
    """Take the workspace's state lock for the lock ID in `info["ID"]`, held by `job` (a
    job's credential) or else by the user `actor` (a user's token).

    Locking again with the ID that already holds the lock succeeds for the holder only
    (Terraform's HTTP client retries requests whose response was lost). Raises
    StateLockedError with the holder's info when another ID, or another caller with the
    same ID, holds the lock."""
    lock_id = info.get("ID") if isinstance(info, dict) else None
    if not isinstance(lock_id, str) or not lock_id:
        raise StateInvalidError('the lock info must be a JSON object with a non-empty string "ID"')
    if len(lock_id) > MAX_LOCK_ID_LENGTH:
        raise StateInvalidError(f"the lock ID is longer than {MAX_LOCK_ID_LENGTH} characters")
    user = _user(actor)
    with transaction.atomic():
        _lock_workspace(workspace)
        # Read under the workspace row lock: a concurrent LOCK waits above until this
        # transaction commits, then sees our StateLock and gets StateLockedError.
        existing = StateLock.objects.filter(workspace=workspace).first()
        if existing is not None:
            if existing.lock_id == lock_id and _held_by(existing, job=job, user=user):
                return existing
            raise StateLockedError(existing.info)
        lock = StateLock.objects.create(workspace=workspace, lock_id=lock_id, info=info, job=job, user=user)
        audit_record(actor=actor, action="state.lock", obj=workspace, data=_lock_summary(info))
    return lock


def state_unlock(
    *, workspace: Workspace, lock_id: str | None, actor: Any, job: Any = None, may_force: bool = False
) -> bool:
    """Release the workspace's state lock. Returns False when it was not locked (unlock is
    idempotent: a retried UNLOCK must not fail).

    The holder (see state_lock) releases it with its lock ID. Anyone else is refused with
    StateConflictError, even with the right ID, unless `may_force` (the caller has `admin`
    on the workspace): then an UNLOCK naming the held ID, or naming none (`lock_id` None),
    is a force-unlock, audited as `state.force_unlock`. A wrong ID is refused even then:
    the caller meant another lock."""
    user = _user(actor)
    with transaction.atomic():
        _lock_workspace(workspace)
        existing = StateLock.objects.filter(workspace=workspace).select_related("user").first()
        if existing is None:
            return False
        if lock_id is not None and existing.lock_id != lock_id:
            raise StateConflictError(
                f"the state is locked with ID {existing.lock_id}, not {lock_id}; only the holder can unlock it",
                lock_info=existing.info,
            )
        force = lock_id is None or not _held_by(existing, job=job, user=user)
        if force and not may_force:
            raise StateConflictError(
                f"the state lock {existing.lock_id} is held by {_holder_label(existing)}, not by you: only its "
                f"holder can unlock it; someone with 'admin' on workspace '{workspace.name}' can force-unlock it",
                lock_info=existing.info,
            )
        existing.delete()
        data = _lock_summary(existing.info)
        if force:
            data["requested_id"] = lock_id or ""
            data["holder"] = _holder_label(existing)
        audit_record(actor=actor, action="state.force_unlock" if force else "state.unlock", obj=workspace, data=data)
    return True


# Serials are stored in a signed 64-bit column (PostgreSQL bigint).
MAX_SERIAL = 2**63 - 1


def _parse_state(data: bytes) -> tuple[int, str]:
    """The (serial, lineage) of a Terraform state file, or StateInvalidError saying what is wrong."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        # ValueError, not only JSONDecodeError: Python refuses an integer of more than 4300
        # digits with a plain ValueError.
        raise StateInvalidError(f"the state is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise StateInvalidError("the state must be a JSON object")
    serial = doc.get("serial")
    # bool is an int subclass in Python: `"serial": true` is not a serial.
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise StateInvalidError('the state needs a non-negative integer "serial"')
    if serial > MAX_SERIAL:
        raise StateInvalidError(f'the state "serial" {serial} does not fit in 64 bits (at most {MAX_SERIAL})')
    lineage = doc.get("lineage")
    if not isinstance(lineage, str) or not lineage:
        raise StateInvalidError('the state needs a non-empty string "lineage"')
    if len(lineage) > MAX_LINEAGE_LENGTH:
        raise StateInvalidError(f'the state "lineage" is longer than {MAX_LINEAGE_LENGTH} characters')
    return serial, lineage


def state_push(
    *, workspace: Workspace, data: bytes, lock_id: str | None, actor: Any, task: Task | None = None,
    job: Any = None,
) -> tuple[StateVersion, bool]:
    """Store `data` as the workspace's new state version, from `job` (a job's credential)
    or else the user `actor`. Returns (version, created): created is False for a
    byte-identical retry of a serial that is already stored.

    Refused with StateLockedError while the lock is held by another lock ID (or any, when
    `lock_id` is None) or by another caller (see state_lock), with StateConflictError for a serial that exists with other content, an
    older serial or another lineage, with StateInvalidError/StateTooLargeError for a body
    that is not a state or is too big."""
    limit = settings.IAC_MAX_STATE_BYTES
    if len(data) > limit:
        raise StateTooLargeError(f"the state is {len(data)} bytes; the limit is {limit}")
    serial, lineage = _parse_state(data)
    sha256 = hashlib.sha256(data).hexdigest()
    user = _user(actor)
    # Encrypt outside the transaction: it is CPU work that needs no row lock.
    encrypted = crypto.encrypt(data)

    with transaction.atomic():
        _lock_workspace(workspace)
        lock = StateLock.objects.filter(workspace=workspace).first()
        if lock is not None and (lock.lock_id != lock_id or not _held_by(lock, job=job, user=user)):
            raise StateLockedError(lock.info)

        # The newest version (without its bytes) answers the usual push, a new serial, in one
        # query; the serial itself is looked up only when it is not newer (a retry).
        versions = StateVersion.objects.filter(workspace=workspace).defer("encrypted_data")
        current = versions.order_by("-serial", "-id").first()
        same_serial = None
        if current is not None and serial <= current.serial:
            same_serial = current if current.serial == serial else versions.filter(serial=serial).first()
        if same_serial is not None:
            if same_serial.sha256 == sha256:
                return same_serial, False
            raise StateConflictError(
                f"state serial {serial} is already stored with different content: another writer "
                f"changed the state; pull the current state and try again"
            )
        if current is not None:
            if lineage != current.lineage:
                raise StateConflictError(
                    f"the state has lineage {lineage} but the workspace's state has lineage "
                    f"{current.lineage}: it is a different state, not a newer version of this one"
                )
            if serial < current.serial:
                raise StateConflictError(
                    f"state serial {serial} is older than the current serial {current.serial}; "
                    f"pull the current state and try again"
                )
        # The workspace row lock makes the checks above and this insert one step; the
        # (workspace, serial) unique constraint backs it up at the database level.
        version = StateVersion.objects.create(
            workspace=workspace,
            serial=serial,
            lineage=lineage,
            sha256=sha256,
            size=len(data),
            encrypted_data=encrypted,
            task=task,
            created_by=user,
        )
    return version, True


def state_pull(*, workspace: Workspace) -> bytes | None:
    """The newest state of the workspace, decrypted, or None when it has none yet."""
    current = StateVersion.objects.filter(workspace=workspace).order_by("-serial", "-id").first()
    return current.data if current is not None else None


def state_locks_release_for_job(*, job: Any) -> int:
    """Release the state lock a job's terraform took, when the job ends in any way (done,
    errored, cancelled, killed, abandoned): a SIGKILLed terraform never unlocks, and the
    next run would find the state locked."""
    locks = list(StateLock.objects.filter(job=job).select_related("workspace"))
    for lock in locks:
        audit_record(actor=f"{job.kind} job {job.id} (run {job.task_id})", action="state.unlock_on_job_end",
                     obj=lock.workspace, data=_lock_summary(lock.info))
        lock.delete()
    return len(locks)

