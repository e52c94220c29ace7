"""IAC_LOG_FORMAT: text stays as it was; json is one object per line with the run/job/agent ids."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iacplatform.logs import bound, logging_config
from tasks_app.dispatch.agent_reports import agent_set_offline
from tasks_app.services.runs import run_create
from tests.agents_app.fakes import FakeAgent

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def captured() -> Iterator[Callable[[str], io.StringIO]]:
    """Configure logging as settings would for a format, with the console handler writing
    into a buffer; restore the suite's logging afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()

    def configure(fmt: str) -> io.StringIO:
        logging.config.dictConfig(logging_config(fmt, "INFO"))
        root.handlers[0].setStream(buffer)
        return buffer

    yield configure
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.django_db(transaction=True)
def test_it_logs_an_agent_going_offline_as_one_json_object_with_its_ids(setup, client, captured):
    _, token, ws = setup
    agent = FakeAgent(client, token, "a1")
    run = run_create(workspace=ws, operation="plan_and_apply", actor="test")
    job = agent.claim()
    buffer = captured("json")

    agent_set_offline(agent_id=agent.id, reason="test")

    lines = _json_lines(buffer.getvalue())  # every line parses: nothing but JSON objects
    offline = next(line for line in lines if line["event"].startswith("agent a1 offline"))
    assert offline["level"] == "info"
    assert offline["agent_id"] == agent.id
    assert offline["logger"] == "tasks_app.dispatch.agent_reports"
    assert offline["timestamp"].endswith("Z")
    lost = next(line for line in lines if "lost" in line["event"])
    assert (lost["agent_id"], lost["job_id"], lost["run_id"]) == (agent.id, job["id"], run.id)


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_text_format_unchanged(setup, client, captured):
    _, token, _ws = setup
    agent = FakeAgent(client, token, "a1")
    buffer = captured("text")

    agent_set_offline(agent_id=agent.id, reason="test")

    assert buffer.getvalue().splitlines() == ["agent a1 offline: test"]


def test_it_unbinds_ids_when_the_block_ends(captured):
    buffer = captured("json")
    with bound(agent_id=1, job_id=None) as bind:
        bind(run_id=3)
        logging.getLogger("t").warning("inside")
    logging.getLogger("t").warning("outside")

    inside, outside = _json_lines(buffer.getvalue())
    assert (inside["agent_id"], inside["run_id"], "job_id" in inside) == (1, 3, False)
    assert "agent_id" not in outside and "run_id" not in outside


def _settings_process(log_format: str) -> str:
    """Start a process with the real settings and log from Django's and Celery's loggers;
    returns its stderr."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "iacplatform.settings",
        "IAC_LOG_FORMAT": log_format,
        # Never start the embedded servers: nothing connects in this process.
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "SECRET_KEY": "x" * 50,
    }
    code = (
        "import django, logging; django.setup(); "
        "from iacplatform.logs import bound\n"
        "with bound(run_id=7):\n"
        "    logging.getLogger('django.request').warning('from django')\n"
        "    logging.getLogger('celery.worker').info('from celery')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stderr


def test_it_renders_every_logger_as_json_through_the_settings():
    lines = [line for line in _json_lines(_settings_process("json")) if line["logger"] != "axes.apps"]
    assert [(line["logger"], line["event"], line["run_id"]) for line in lines] == [
        ("django.request", "from django", 7),
        ("celery.worker", "from celery", 7),
    ]


def test_it_logs_plain_messages_by_default():
    assert _settings_process("text").splitlines()[-2:] == ["from django", "from celery"]


def test_it_gives_agents_the_json_format_with_their_name_and_the_jobs_id():
    code = (
        "import logging, threading\n"
        "from agents_app.agent.__main__ import configure_logging\n"
        "configure_logging('a1', 'json')\n"
        "logging.getLogger('iac.agent').info('registered')\n"
        "job = threading.Thread(target=lambda: logging.getLogger('iac.agent').warning('terraform failed'), name='job-42')\n"
        "job.start(); job.join()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    registered, failed = _json_lines(done.stderr)
    assert (registered["event"], registered["agent"], registered["level"], "job_id" in registered) == (
        "registered", "a1", "info", False)
    assert (failed["event"], failed["job_id"], failed["level"]) == ("terraform failed", 42, "warning")
    assert "timestamp" in failed
