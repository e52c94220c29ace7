"""`manage.py up`: the whole platform on one machine, in the foreground.

Migrates, bootstraps the demo, then starts Daphne (web), a Celery worker, Celery beat and
the local pool's agent processes; prints the URL and credentials; Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO

import requests
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from agents_app.agent.sandbox import agent_environment


class Command(BaseCommand):
    help = "Run web, worker, beat and the local pool's agents (Ctrl-C stops all)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("IAC_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("IAC_PORT", "8000")))

    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"==> {text}"))

    def handle(self, *args, host: str, port: int, **options) -> None:
        url = f"http://{host}:{port}"
        self.step("migrating the database")
        call_command("migrate", interactive=False, verbosity=0)
        self.step("creating the admin user, the local pool and the demo workspace")
        out = StringIO()
        call_command("bootstrap_demo", stdout=out)
        boot = json.loads(out.getvalue().strip().splitlines()[-1])

        # Agents here run beside web: they (and terraform's state backend calls) use the local
        # URL unless IAC_AGENT_URL says otherwise; browsers use IAC_PUBLIC_URL.
        env = dict(os.environ, IAC_PUBLIC_URL=os.environ.get("IAC_PUBLIC_URL", url),
                   IAC_AGENT_URL=os.environ.get("IAC_AGENT_URL", url), PYTHONUNBUFFERED="1")
        logs = settings.VAR_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        procs: list[tuple[str, subprocess.Popen]] = []

        def spawn(name: str, cmd: list[str], proc_env: dict[str, str] = env) -> None:
            log = open(logs / f"{name}.log", "ab")
            procs.append((name, subprocess.Popen(cmd, env=proc_env, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True)))
            self.stdout.write(f"    started {name} (log: {logs / f'{name}.log'})")

        py = sys.executable
        self.step("starting web, worker and beat")
        spawn("web", [py, "-m", "daphne", "-b", host, "-p", str(port), "iacplatform.asgi:application"])
        spawn("worker", [py, "-m", "celery", "-A", "iacplatform", "worker", "--pool", "threads", "-c", "4", "-l", "info"])
        spawn("beat", [py, "-m", "celery", "-A", "iacplatform", "beat", "-l", "info",
                       "-s", str(settings.VAR_DIR / "celerybeat-schedule")])
        self.step("waiting for the web server")
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/accounts/login/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stderr.write(f"web did not come up; see {logs / 'web.log'}")
                self._stop(procs)
                sys.exit(1)
            time.sleep(0.3)
        self.step(f"starting {boot['agents']} agent(s) of pool '{boot['pool']}'")
        # Agents get an allowlist of this environment, never the server's secrets (SECRET_KEY,
        # DATABASE_URL, ...): the terraform they run executes user code. The pool token goes
        # through the environment, not the command line (visible to anyone in ps). Their work
        # roots are outside var/ (agents_app.agent: IAC_AGENT_WORK_ROOT, by default
        # ~/.local/state/iac-agents/<name>).
        # The demo's apply appends to var/demo/applied.log: the sandbox lets it write there,
        # and nowhere else of var/.
        demo_dir = settings.VAR_DIR / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        writable = os.pathsep.join(p for p in (env.get("IAC_AGENT_SANDBOX_BIND_RW", ""), str(demo_dir)) if p)
        agent_env = agent_environment(env, IAC_POOL_TOKEN=boot["pool_token"], PYTHONUNBUFFERED="1",
                                      IAC_AGENT_SANDBOX_BIND_RW=writable)
        for i in range(boot["agents"]):
            spawn(f"agent-{i + 1}", [py, "-m", "agents_app.agent", "--server", env["IAC_AGENT_URL"],
                                     "--name", f"local-{i + 1}", "--slots", str(boot["slots"])], agent_env)

        self.stdout.write(self.style.SUCCESS(
            f"\nThe platform is up at {url}/\n"
            f"  login:      {boot['username']} / {boot['password']}\n"
            f"  API token:  {boot['api_token']}   (Authorization: Token <token>)\n"
            f"  demo:       {url}/workspaces/{boot['workspace']}/\n"
            f"  API schema: {url}/api/schema/\n"
            "Ctrl-C stops everything."
        ))
        stop = {"now": False}

        def on_signal(signum, frame) -> None:
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["now"]:
            for name, proc in procs:
                if proc.poll() is not None:
                    self.stderr.write(f"{name} exited with {proc.returncode}; see {logs / f'{name}.log'}")
                    stop["now"] = True
            time.sleep(0.5)
        self.step("stopping")
        self._stop(procs)

    def _stop(self, procs: list[tuple[str, subprocess.Popen]]) -> None:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
