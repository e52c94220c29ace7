"""A unified diff between two state versions of a workspace, with every sensitive value
masked before anything is compared.

What the state service stores is Terraform's own state JSON (format 4), encrypted at rest.
Terraform marks secrets in it two ways: an output with `"sensitive": true`, and, per
resource instance, `sensitive_attributes`: a list of paths into `attributes`, each a list of
steps (`{"type": "get_attr", "value": "password"}`, `{"type": "index", "value": {"value": 0,
"type": "number"}}`). Neither is enough alone: an attribute computed from a secret is not
always marked (terraform_data's `output` copies its `input`, password included, unmarked).
So the values found at marked places, and the workspace's sensitive variable values, are
also masked wherever else they appear.

Only states up to IAC_STATE_DIFF_MAX_BYTES are compared: the work is done inside the page's
request."""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from iacplatform.errors import Invalid
from tasks_app.models import StateVersion, Variable

MASK = "(sensitive)"
# A marked value shorter than this is not hunted for elsewhere: masking every "1" or "x" in
# a state would hide the diff, not a secret. Sensitive variables are masked at any length.
MIN_SECRET_LENGTH = 4
MAX_DIFF_LINES = 5000


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _step_key(step: Any) -> Any:
    if isinstance(step, str):
        return step
    if not isinstance(step, dict):
        return None
    value = step.get("value")
    if step.get("type") == "index" and isinstance(value, dict):
        return value.get("value")
    return value


def _child(node: Any, key: Any) -> tuple[Any, Any] | None:
    """(container, key) of `key` under `node`, looking through a dynamic value's
    {"value": …, "type": …} wrapper; None when the path does not lead anywhere."""
    for candidate in (node, node.get("value") if isinstance(node, dict) and "type" in node else None):
        if isinstance(candidate, dict) and isinstance(key, str) and key in candidate:
            return candidate, key
        if isinstance(candidate, list) and isinstance(key, int) and 0 <= key < len(candidate):
            return candidate, key
    return None


def _mask_path(attributes: Any, path: Any, found: list[str]) -> None:
    steps = path if isinstance(path, list) else [path]
    node: Any = attributes
    place = None
    for step in steps:
        place = _child(node, _step_key(step))
        if place is None:
            return
        node = place[0][place[1]]
    if place is not None:
        found.extend(_strings(node))
        place[0][place[1]] = MASK


def _mask_strings(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = MASK if value == secret else value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: _mask_strings(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_strings(v, secrets) for v in value]
    return value


def state_masked(state: Any, secrets: Sequence[str] = ()) -> Any:
    """A copy of a parsed state with sensitive outputs, sensitive attributes and every
    occurrence of their values (and of `secrets`) replaced by MASK."""
    if not isinstance(state, dict):
        return state
    state = copy.deepcopy(state)
    found: list[str] = []
    for output in (state.get("outputs") or {}).values():
        if isinstance(output, dict) and output.get("sensitive"):
            found.extend(_strings(output.get("value")))
            output["value"] = MASK
    for resource in state.get("resources") or []:
        for instance in (resource.get("instances") or []) if isinstance(resource, dict) else []:
            if not isinstance(instance, dict):
                continue
            for path in instance.get("sensitive_attributes") or []:
                _mask_path(instance.get("attributes"), path, found)
    hunted = {s for s in found if len(s) >= MIN_SECRET_LENGTH} | {s for s in secrets if s}
    # Longest first: a secret that contains another is masked whole.
    return _mask_strings(state, sorted(hunted, key=len, reverse=True))


def _lines(version: StateVersion, secrets: Sequence[str]) -> list[str]:
    try:
        state = json.loads(version.data)
    except ValueError:
        return ["(this state version is not valid JSON)"]
    return json.dumps(state_masked(state, secrets), indent=2, sort_keys=True, ensure_ascii=False).splitlines()


class TooLargeToCompare(Invalid):
    """A state version is bigger than IAC_STATE_DIFF_MAX_BYTES: the page does not diff it."""


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


@dataclass(frozen=True)
class StateDiff:
    old: StateVersion
    new: StateVersion
    lines: list[str]  # unified diff lines, without line ends
    truncated: bool


def workspace_secrets(workspace_id: int) -> list[str]:
    return [v.value for v in Variable.objects.filter(workspace_id=workspace_id, sensitive=True)]


def state_versions_diff(*, workspace_id: int, old_serial: int, new_serial: int) -> StateDiff | None:
    """The masked diff from serial `old_serial` to `new_serial`; None when either is not a
    state version of the workspace. Raises TooLargeToCompare, before reading either state,
    when one is bigger than IAC_STATE_DIFF_MAX_BYTES: parsing, masking and diffing two big
    states (difflib is worse than linear in the lines) is seconds of a web process's CPU
    and hundreds of MB for one page view."""
    versions = {v.serial: v for v in StateVersion.objects.filter(
        workspace_id=workspace_id, serial__in=[old_serial, new_serial]).defer("encrypted_data")}
    if old_serial not in versions or new_serial not in versions:
        return None
    old, new = versions[old_serial], versions[new_serial]
    limit = settings.IAC_STATE_DIFF_MAX_BYTES
    if max(old.size, new.size) > limit:
        raise TooLargeToCompare(
            f"Serials {old.serial} ({_mib(old.size)}) and {new.serial} ({_mib(new.size)}) are too large to compare "
            f"here: this page compares states of up to {_mib(limit)} each (IAC_STATE_DIFF_MAX_BYTES). Compare them "
            "on your own machine (terraform state pull gives the latest).")
    secrets = workspace_secrets(workspace_id)
    diff = list(difflib.unified_diff(_lines(old, secrets), _lines(new, secrets),
                                     fromfile=f"serial {old.serial}", tofile=f"serial {new.serial}", lineterm=""))
    return StateDiff(old=old, new=new, lines=diff[:MAX_DIFF_LINES], truncated=len(diff) > MAX_DIFF_LINES)
