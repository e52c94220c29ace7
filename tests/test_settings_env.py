"""Settings come from the environment and refuse bad values with a clear message."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_settings(**env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, DJANGO_SETTINGS_MODULE="iacplatform.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
                               "print(settings.IAC_AGENT_OFFLINE_AFTER_SECONDS, settings.IAC_PUBLIC_URL)"],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "name,value",
    [
        ("IAC_AGENT_OFFLINE_AFTER_SECONDS", "two minutes"),
        ("IAC_AGENT_OFFLINE_AFTER_SECONDS", "-5"),
        ("IAC_DEBUG", "maybe"),
        ("IAC_WARMUP_MAX_RETRIES", "0"),
        ("IAC_KUBERNETES_API_URL", "k8s.example.test:6443"),
        ("IAC_KUBERNETES_TIMEOUT_SECONDS", "0"),
        ("IAC_KUBERNETES_VERIFY_SSL", "perhaps"),
    ],
)
def test_it_refuses_a_bad_value_naming_the_variable(name, value):
    result = load_settings(**{name: value})
    assert result.returncode != 0
    assert f'Environment variable "{name}" invalid' in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_it_reads_good_values():
    result = load_settings(IAC_AGENT_OFFLINE_AFTER_SECONDS="90", IAC_PUBLIC_URL="https://iac.example.test/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["90.0", "https://iac.example.test"]
