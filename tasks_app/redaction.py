"""The values the server masks with: the workspace's sensitive values, read from the
database. The masking itself is agents_app.redaction, the one masker the server shares with
the agent (pure Python, no Django)."""

from __future__ import annotations

from tasks_app.models import Task, Variable
from tasks_app.workflows.models import VariableSetVariable
from tasks_app.workflows.set_reads import applies_to


def sensitive_values(workspace_id: int) -> list[str]:
    """The values of the workspace's sensitive variables (terraform and env) and of those of
    the variable sets that apply to it, decrypted."""
    own = [v.value for v in Variable.objects.filter(workspace_id=workspace_id, sensitive=True) if v.value]
    sets = VariableSetVariable.objects.filter(applies_to(workspace_id, prefix="variable_set__"), sensitive=True)
    return own + [v.value for v in sets if v.value]


def run_sensitive_values(task: Task, ciphertexts: list[bytes] | None = None) -> list[str]:
    """The sensitive values a job of the run was given: from their `ciphertexts` (the job's
    Job.mask_ciphertexts, read with the locked job), else the workspace's, queried."""
    if ciphertexts is None:
        return sensitive_values(task.workspace_id)
    try:
        values = [Variable(sensitive=True, encrypted_value=bytes(c)).value for c in ciphertexts]
    except ValueError:
        # Sealed with a key dropped since the job started (a key rotation while it ran):
        # the workspace's current values, rather than no masking or a failed request.
        return sensitive_values(task.workspace_id)
    return [v for v in values if v]
