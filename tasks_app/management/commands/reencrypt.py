"""manage.py reencrypt: re-encrypt everything encrypted at rest with the first key of
IAC_ENCRYPTION_KEYS, so the old keys can be dropped.

Key rotation: put the new key first (`IAC_ENCRYPTION_KEYS=new,old`), restart, run this, then
remove `old`. Rows already encrypted with the first key are left alone, so a second run (or
a run interrupted and started again) does nothing more. Each batch is its own transaction
with its rows locked, so the platform keeps running meanwhile and a row written concurrently
is never overwritten with stale bytes.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction

from agents_app.models import AgentPool
from iacplatform import crypto
from tasks_app.models import Plan, StateVersion, Variable
from tasks_app.vcs.models import VcsConnection
from tasks_app.workflows.models import NotificationDestination, VariableSetVariable

# Every column written with iacplatform.crypto.encrypt (grep for it when adding one).
ENCRYPTED_COLUMNS: list[tuple[type[models.Model], str]] = [
    (Variable, "encrypted_value"),
    (VariableSetVariable, "encrypted_value"),
    (Plan, "encrypted_data"),
    (Plan, "encrypted_json"),  # the plan's `show -json`, for policy checks
    (StateVersion, "encrypted_data"),
    (AgentPool, "token_encrypted"),  # the pool token the autoscaler starts pods with
    (NotificationDestination, "encrypted_secret"),
    (VcsConnection, "encrypted_token"),
    (VcsConnection, "encrypted_ssh_key"),
    (VcsConnection, "encrypted_webhook_secret"),
    (VcsConnection, "encrypted_github_app_private_key"),
]
# Not here: Job.mask_ciphertexts (an array; a running job's copy of its variables' values,
# which falls back to the workspace's values when it no longer decrypts: tasks_app/redaction.py).


class Command(BaseCommand):
    help = ("Re-encrypt sensitive variables (of workspaces and variable sets), plan files and their JSON, state "
            "versions, pool tokens, notification and VCS connection secrets with the first IAC_ENCRYPTION_KEYS key.")

    def add_arguments(self, parser: Any) -> None:
        # Small batches: a plan file or state may be tens of MiB, and a batch is in memory.
        parser.add_argument("--batch-size", type=int, default=20)

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        for model, field in ENCRYPTED_COLUMNS:
            rotated, current = self.reencrypt_column(model, field, batch_size)
            self.stdout.write(f"{model.__name__}.{field}: {rotated} re-encrypted, {current} already current")

    def reencrypt_column(self, model: type[models.Model], field: str, batch_size: int) -> tuple[int, int]:
        # Empty values (no sensitive value; a plan file pruned by retention) hold nothing.
        rows = model.objects.exclude(**{f"{field}__isnull": True}).exclude(**{field: b""})
        total = rows.count()
        rotated = current = 0
        last_id = 0
        label = f"{model.__name__}.{field}"
        while True:
            with transaction.atomic():
                batch = list(
                    rows.filter(id__gt=last_id).order_by("id").select_for_update(no_key=True, of=("self",))
                    .values_list("id", field)[:batch_size]
                )
                if not batch:
                    break
                for row_id, token in batch:
                    if crypto.is_current(token):
                        current += 1
                        continue
                    try:
                        new = crypto.rotate(token)
                    except ValueError as exc:
                        raise CommandError(f"{label} of row {row_id}: {exc}") from exc
                    model.objects.filter(id=row_id).update(**{field: new})
                    rotated += 1
                last_id = batch[-1][0]
            self.stdout.write(f"{label}: {rotated + current}/{total}")
        return rotated, current
