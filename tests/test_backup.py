"""Backup and restore as docs/operations.md describes them: pg_dump the platform database,
pg_restore it into a new PostgreSQL, start the platform on it with the same encryption key:
the state and the sensitive variables are readable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pgserver
import pytest
from cryptography.fernet import Fernet
from django.db import connection

from iacplatform import crypto
from tasks_app.models import StateVersion, Variable

ROOT = Path(__file__).resolve().parent.parent
# The PostgreSQL client programs that come with the embedded server (the same major version).
PG_BIN = Path(pgserver.__file__).parent / "pginstall" / "bin"
KEY = Fernet.generate_key().decode()

pytestmark = pytest.mark.django_db(transaction=True)  # committed: pg_dump sees it


def _suite_database_url() -> str:
    """libpq URL of the test database (the embedded server: a unix socket dir in HOST)."""
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    host = db.get("HOST") or ""
    if host.startswith("/"):
        return f"postgresql://{auth}@/{db['NAME']}?host={host}" + (f"&port={db['PORT']}" if db.get("PORT") else "")
    return f"postgresql://{auth}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture
def new_postgres(request) -> pgserver.PostgresServer:
    """A PostgreSQL of the test's own, stopped and deleted at the end. Not under tmp_path:
    its server runs as another user, which needs every parent dir traversable, and another
    pytest session on the machine resets /tmp/pytest-of-<user> to 0700 at any time."""
    root = Path(tempfile.mkdtemp(prefix="iac-restored-pg-"))
    root.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    request.addfinalizer(server.cleanup)
    return server


def test_it_restores_a_dump_into_a_new_postgres_with_readable_state_and_secrets(settings, workspace, new_postgres,
                                                                                tmp_path):
    settings.IAC_ENCRYPTION_KEYS = [KEY]
    secret = Variable(workspace=workspace, key="db_password", sensitive=True)
    secret.set_value("s3cret-value")
    secret.save()
    StateVersion.objects.create(workspace=workspace, serial=3, lineage="lin", sha256="c" * 64, size=17,
                                encrypted_data=crypto.encrypt(b'{"serial": 3}\n...'))

    # Backup: the whole platform database, in pg_dump's custom format.
    dump = tmp_path / "iac.dump"
    subprocess.run([PG_BIN / "pg_dump", "--format=custom", f"--file={dump}", _suite_database_url()], check=True)

    # Restore into a new server: an empty database, then pg_restore.
    new_postgres.psql("CREATE DATABASE iac;")
    restored_url = new_postgres.get_uri("iac")
    subprocess.run([PG_BIN / "pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                    f"--dbname={restored_url}", dump], check=True)

    # The platform on the restored database, with the same key (and another SECRET_KEY:
    # the configured key, not the secret key, is what must be kept).
    code = (
        "import json, django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', check=True, verbosity=0)  # nothing missing after the restore\n"
        "from tasks_app.models import StateVersion, Variable, Workspace\n"
        f"ws = Workspace.objects.get(name={workspace.name!r})\n"
        "print(json.dumps({'variable': Variable.objects.get(workspace=ws, key='db_password').value,\n"
        "                  'state': StateVersion.objects.get(workspace=ws, serial=3).data.decode()}))\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "iacplatform.settings",
        "DATABASE_URL": restored_url,
        "REDIS_URL": "redis://127.0.0.1:1/0",  # not needed to read; never connected
        "SECRET_KEY": "a-different-secret-key-" + "x" * 30,
        "IAC_ENCRYPTION_KEYS": KEY,
        "IAC_DB_POOL": "false",
    }
    env.pop("IAC_ENCRYPTION_KEY", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"variable": "s3cret-value", "state": '{"serial": 3}\n...'}
