"""IAC_ENCRYPTION_KEYS: the first key encrypts, any decrypts; `manage.py reencrypt` moves
everything to the first key."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from iacplatform import crypto
from tasks_app.models import Plan, StateVersion, Variable
from tasks_app.services.runs import run_create

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def _use_keys(settings, keys: list[str], single: str = "") -> None:
    settings.IAC_ENCRYPTION_KEYS = keys
    settings.IAC_ENCRYPTION_KEY = single


def test_it_decrypts_with_any_key_and_encrypts_with_the_first(settings):
    _use_keys(settings, [KEY_A])
    token = crypto.encrypt(b"secret")

    _use_keys(settings, [KEY_B, KEY_A])
    assert crypto.decrypt(token) == b"secret"
    assert Fernet(KEY_B.encode()).decrypt(crypto.encrypt(b"new")) == b"new"

    _use_keys(settings, [KEY_B])
    with pytest.raises(ValueError, match="cannot be decrypted"):
        crypto.decrypt(token)


def test_it_keeps_data_encrypted_with_the_secret_key_readable_after_a_key_is_configured(settings):
    _use_keys(settings, [])
    derived = crypto.encrypt(b"from before any key")
    _use_keys(settings, [KEY_A])
    assert crypto.decrypt(derived) == b"from before any key"


def test_it_still_honours_the_single_key_setting(settings):
    _use_keys(settings, [], single=KEY_A)
    assert Fernet(KEY_A.encode()).decrypt(crypto.encrypt(b"x")) == b"x"
    _use_keys(settings, [KEY_B], single=KEY_A)  # the old single key stays a decryption key
    assert crypto.decrypt(Fernet(KEY_A.encode()).encrypt(b"y")) == b"y"


def test_it_refuses_a_malformed_key(settings):
    from django.core.exceptions import ImproperlyConfigured

    _use_keys(settings, [KEY_A, "not-a-key"])
    with pytest.raises(ImproperlyConfigured, match="key 2"):
        crypto.encrypt(b"x")


@pytest.mark.django_db
def test_it_reencrypts_every_column_so_the_old_key_can_go(settings, workspace):
    _use_keys(settings, [KEY_A])
    variable = Variable(workspace=workspace, key="password", sensitive=True)
    variable.set_value("hunter2")
    variable.save()
    task = run_create(workspace=workspace, operation="plan", actor="test")
    Plan.objects.create(task=task, encrypted_data=crypto.encrypt(b"plan.out"), sha256="a" * 64, size=8)
    StateVersion.objects.create(workspace=workspace, serial=1, lineage="l", sha256="b" * 64, size=2,
                                encrypted_data=crypto.encrypt(b"{}"))

    _use_keys(settings, [KEY_B, KEY_A])
    out = io.StringIO()
    call_command("reencrypt", "--batch-size", "1", stdout=out)
    assert "StateVersion.encrypted_data: 1 re-encrypted, 0 already current" in out.getvalue()

    _use_keys(settings, [KEY_B])
    assert Variable.objects.get(id=variable.id).value == "hunter2"
    assert Plan.objects.get(task=task).data == b"plan.out"
    assert StateVersion.objects.get(workspace=workspace).data == b"{}"

    again = io.StringIO()
    call_command("reencrypt", stdout=again)  # idempotent: nothing left to do
    assert "Variable.encrypted_value: 0 re-encrypted, 1 already current" in again.getvalue()


def test_it_refuses_to_start_with_a_malformed_key_in_the_list():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "iacplatform.settings", "IAC_ENCRYPTION_KEYS": f"{KEY_A},oops",
           "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", "REDIS_URL": "redis://127.0.0.1:1/0",
           "SECRET_KEY": "x" * 50}
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True,
                          text=True)
    assert done.returncode != 0
    assert 'Environment variable "IAC_ENCRYPTION_KEYS" invalid' in done.stderr and "key 2" in done.stderr
    assert KEY_A not in done.stderr  # a key is never echoed


def test_reencrypt_knows_every_encrypted_column():
    """A column sealed with iacplatform.crypto that `manage.py reencrypt` does not rotate
    would become unreadable once the old key is dropped."""
    from django.apps import apps
    from django.db import models

    from tasks_app.management.commands.reencrypt import ENCRYPTED_COLUMNS

    sealed = {(m, f.name) for m in apps.get_models() for f in m._meta.get_fields()
              if isinstance(f, models.BinaryField) and ("encrypted" in f.name)}
    assert sealed == set(ENCRYPTED_COLUMNS)
