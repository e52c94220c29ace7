"""Where the warm path's Confirm latency goes, one hop at a time.

    python -m bench.diagnose [--iterations 10]

Brings up its own platform (database `iac_bench_diag`, same machinery as
bench.confirm_latency) and measures, without terraform in the way:

1. the server side of Confirm and of the agent's claim, in process (time and query count);
2. Confirm -> a long-polling agent has the apply job in hand, over real HTTP (a scripted
   agent: register, long-poll claim, post logs), which is what the fast path pays before
   `terraform apply` can start;
3. one log post (the first apply line reaching the API);
4. `terraform apply plan.out` alone: time to its first output line, with a local state and
   with the platform's HTTP state backend (lock + state GET go through Daphne).

Results: printed, and bench/results/diagnose.json."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.live import ROOT, BenchPlatform
from bench.terraform_fixture import MAIN_TF, ensure_mirror, write_cli_config

RESULTS = ROOT / "bench" / "results"


def say(text: str) -> None:
    print(text, flush=True)


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.1f}" if xs else "      -"


class FakeAgent:
    """The agent protocol spoken by this script: no terraform, just the HTTP hops."""

    def __init__(self, base: str, pool_token: str, name: str) -> None:
        self.base = base
        self.s = requests.Session()
        data = self.s.post(
            f"{base}/agent/v1/register",
            json={"name": name, "slots": 3},
            headers={"Authorization": f"Bearer {pool_token}"},
            timeout=10,
        ).json()
        self.id = data["agent_id"]
        self.token = data["token"]

    def heartbeats(self, stop: threading.Event) -> None:
        """Every second, like a real agent, reporting the warm dirs it "holds" (every apply_pending
        run), so the server neither marks it offline nor releases its reservations."""
        from django.db import connection

        from tasks_app.models import Task

        s = requests.Session()
        try:
            while not stop.wait(1.0):
                warm = [
                    {"task": t, "plan_hash": h}
                    for t, h in Task.objects.filter(status="apply_pending").values_list("id", "plan_hash")
                ]
                s.post(
                    self.base + "/agent/v1/heartbeat",
                    json={"warm_dirs": warm, "running_jobs": []},
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=10,
                )
        finally:
            connection.close()

    def post(self, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return self.s.post(self.base + path, headers=headers, timeout=30, **kw)


def timed_lines(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float | None, float, int]:
    """(ms to the first output line, ms to exit, exit code) of a command, as the agent reads it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    first = None
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        if first is None and raw.strip():
            first = (time.perf_counter() - t0) * 1000
    rc = proc.wait()
    return first, (time.perf_counter() - t0) * 1000, rc


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.diagnose")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--terraform", default="", help="as in bench.confirm_latency")
    args = p.parse_args()
    var_dir = Path(os.environ.get("IAC_VAR_DIR") or ROOT / "var").resolve()
    live = BenchPlatform(var_dir=var_dir, say=say, db_name="iac_bench_diag", subdir="bench-diag")
    out: dict[str, Any] = {}
    try:
        live.bootstrap_env()
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from rest_framework.authtoken.models import Token

        from agents_app.models import Agent
        from agents_app.services.agents import pool_create
        from bench.confirm_latency import terraform_for_agents
        from tasks_app.models import Task, Workspace
        from tasks_app.services.configs import configuration_create_from_files
        from tasks_app.services.jobs import job_append_log, job_claim, job_finish, job_upload_plan
        from tasks_app.services.runs import run_confirm, run_create

        try:  # the apply acknowledgement, where this version of the platform has one
            from tasks_app.services.jobs import job_ack
        except ImportError:
            job_ack = None

        live.migrate()
        base = live.start_servers()
        user = User.objects.create_superuser("diag", password="diag-password-1")
        token = Token.objects.create(user=user).key
        pool, pool_token = pool_create(name="diag", warm_apply=True, backend="static")
        ws = Workspace.objects.create(name="diag", pool=pool)
        configuration_create_from_files(workspace=ws, files={"main.tf": MAIN_TF}, actor=None)

        # --- 1-3: the hops of the warm path, without terraform ---------------------------
        agent = FakeAgent(base, pool_token, "diag-agent")
        api = requests.Session()
        api.headers["Authorization"] = f"Token {token}"
        agent_row = Agent.objects.get(id=agent.id)
        stop_heartbeats = threading.Event()
        threading.Thread(target=agent.heartbeats, args=(stop_heartbeats,), daemon=True).start()
        rows: list[dict[str, Any]] = []
        for k in range(args.iterations):
            task = run_create(workspace=ws, operation="plan_and_apply", actor=user)
            plan = job_claim(agent_id=agent.id)
            assert plan and plan["kind"] == "plan", plan
            data = f"plan {k}".encode()
            job_upload_plan(
                agent=agent_row,
                job_id=plan["id"],
                fence=plan["fence"],
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
                summary={},
                has_changes=True,
            )
            assert job_finish(agent=agent_row, job_id=plan["id"], fence=plan["fence"], ok=True, kept_dir=True)[
                "keep_dir"
            ]
            row: dict[str, Any] = {}
            if k % 3 == 0:
                # In process: the service calls themselves.
                with CaptureQueriesContext(connection) as q:
                    t = time.perf_counter()
                    run_confirm(task_id=task.id, actor=user)
                    row["confirm_service_ms"] = (time.perf_counter() - t) * 1000
                row["confirm_queries"] = len(q)
                with CaptureQueriesContext(connection) as q:
                    t = time.perf_counter()
                    job = job_claim(agent_id=agent.id)
                    row["claim_service_ms"] = (time.perf_counter() - t) * 1000
                row["claim_queries"] = len(q)
                assert job and job["kind"] == "apply", job
                if job_ack is not None:
                    with CaptureQueriesContext(connection) as q:
                        t = time.perf_counter()
                        job_ack(agent=agent_row, job_id=job["id"], fence=job["fence"])
                        row["ack_service_ms"] = (time.perf_counter() - t) * 1000
                    row["ack_queries"] = len(q)
                with CaptureQueriesContext(connection) as q:
                    t = time.perf_counter()
                    job_append_log(
                        agent=agent_row,
                        job_id=job["id"],
                        fence=job["fence"],
                        seq=1,
                        text="",
                        events={"apply_started_at": time.time(), "apply_path": "fast", "apply_path_reason": "diag"},
                    )
                    job_append_log(
                        agent=agent_row,
                        job_id=job["id"],
                        fence=job["fence"],
                        seq=2,
                        text="terraform_data.bench: Destroying...\n",
                        events={},
                    )
                    row["two_log_appends_service_ms"] = (time.perf_counter() - t) * 1000
                row["log_queries"] = len(q)
            else:
                # Over HTTP: an agent long-polls, Confirm happens, the claim response arrives.
                got: dict[str, Any] = {}

                def poll(got: dict[str, Any]) -> None:
                    r = agent.post("/agent/v1/claim?wait=10")
                    got["t"] = time.perf_counter()
                    got["job"] = r.json() if r.status_code == 200 else None

                th = threading.Thread(target=poll, args=(got,))
                th.start()
                time.sleep(0.5)  # the long-poll is subscribed and waiting, as on an idle agent
                via_api = k % 3 == 2
                t = time.perf_counter()
                if via_api:
                    # As a person's Confirm arrives: the REST API view, in the same Daphne process
                    # as the claim it wakes (it then renders the run while the claim runs).
                    r = api.post(f"{base}/api/v1/runs/{task.id}/confirm/", json={"comment": "diag"}, timeout=30)
                    assert r.status_code == 200, r.text[:500]
                else:
                    run_confirm(task_id=task.id, actor=user)
                t_confirmed = time.perf_counter()
                th.join(15)
                job = got.get("job")
                assert job and job["kind"] == "apply", got
                suffix = "_api" if via_api else ""
                row["confirm_commit_ms" + suffix] = (t_confirmed - t) * 1000
                row["confirm_to_agent_has_job_http_ms" + suffix] = (got["t"] - t) * 1000
                hdr = {"X-Job-Fence": str(job["fence"])}
                if job_ack is not None:
                    t = time.perf_counter()
                    r = agent.post(f"/agent/v1/jobs/{job['id']}/ack", headers=hdr)
                    assert r.status_code < 300, r.text[:300]
                    row["ack_http_ms"] = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                agent.post(
                    f"/agent/v1/jobs/{job['id']}/logs",
                    headers=hdr,
                    json={
                        "seq": 1,
                        "text": "",
                        "events": {"apply_started_at": time.time(), "apply_path": "fast", "apply_path_reason": "diag"},
                    },
                )
                row["log_event_post_http_ms"] = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                agent.post(
                    f"/agent/v1/jobs/{job['id']}/logs",
                    headers=hdr,
                    json={"seq": 2, "text": "terraform_data.bench: Destroying...\n", "events": {}},
                )
                row["log_text_post_http_ms"] = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                agent.post("/agent/v1/heartbeat", json={"warm_dirs": [], "running_jobs": [job["id"]]})
                row["heartbeat_http_ms"] = (time.perf_counter() - t) * 1000
            job_finish(agent=agent_row, job_id=job["id"], fence=job["fence"], ok=True)
            assert Task.objects.get(id=task.id).status == "applied"
            rows.append(row)
        out["hops"] = rows
        stop_heartbeats.set()

        # --- 4: terraform apply alone ----------------------------------------------------
        mirror = ensure_mirror(live.dir / "provider-mirror")
        cli = write_cli_config(live.dir / "terraform.tfrc", mirror)
        _, exe = terraform_for_agents(var_dir, args.terraform)
        tf_ws = Workspace.objects.create(name="diag-tf", pool=pool)
        tf_rows: dict[str, list[dict[str, float | None]]] = {"local state": [], "http state (Daphne)": []}
        for variant in tf_rows:
            d = live.dir / "tf" / variant.split()[0]
            d.mkdir(parents=True, exist_ok=True)
            (d / "main.tf").write_text(MAIN_TF)
            env = dict(
                os.environ,
                TF_CLI_CONFIG_FILE=str(cli),
                TF_IN_AUTOMATION="1",
                TF_INPUT="0",
                CHECKPOINT_DISABLE="1",
                TF_VAR_marker_file=str(d / "applied.txt"),
            )
            if variant.startswith("http"):
                (d / "zzz_backend.tf").write_text('terraform {\n  backend "http" {}\n}\n')
                url = f"{base}/api/v1/workspaces/{tf_ws.id}/state"
                env.update(
                    TF_HTTP_ADDRESS=url,
                    TF_HTTP_LOCK_ADDRESS=f"{url}/lock",
                    TF_HTTP_UNLOCK_ADDRESS=f"{url}/lock",
                    TF_HTTP_USERNAME="diag",
                    TF_HTTP_PASSWORD=token,
                )
            subprocess.run([exe, "init", "-input=false", "-no-color"], cwd=d, env=env, check=True, capture_output=True)
            for _ in range(max(3, args.iterations // 2)):
                subprocess.run(
                    [exe, "plan", "-input=false", "-no-color", "-out=plan.out"],
                    cwd=d,
                    env=env,
                    check=True,
                    capture_output=True,
                )
                first, total, rc = timed_lines([exe, "apply", "-input=false", "-no-color", "plan.out"], d, env)
                assert rc == 0, rc
                tf_rows[variant].append({"first_line_ms": first, "exit_ms": total})
            # And a bare start: how long the binary takes to print anything at all.
        bare = [timed_lines([exe, "version"], ROOT, dict(os.environ, TF_CLI_CONFIG_FILE=str(cli)))[0] for _ in range(5)]
        init_ms = []
        for _ in range(3):
            d = live.dir / "tf" / "init"
            subprocess.run(["rm", "-rf", str(d)], check=True)
            d.mkdir(parents=True)
            (d / "main.tf").write_text(MAIN_TF)
            env = dict(os.environ, TF_CLI_CONFIG_FILE=str(cli), CHECKPOINT_DISABLE="1")
            init_ms.append(timed_lines([exe, "init", "-input=false", "-no-color"], d, env)[1])
        out["terraform"] = {"exe": exe, "apply": tf_rows, "version_first_line_ms": bare, "init_ms": init_ms}
        out["loadavg"] = os.getloadavg()
    finally:
        live.stop()

    hops = out["hops"]
    col = lambda key: [r[key] for r in hops if key in r]  # noqa: E731
    say("")
    say(f"hops of the warm path (medians, {len(hops)} iterations split over 3 modes, ms):")
    say(
        f"  in process  run_confirm                      {med(col('confirm_service_ms'))}  ({med(col('confirm_queries')).strip()} queries)"
    )
    say(
        f"  in process  job_claim (apply, targeted)      {med(col('claim_service_ms'))}  ({med(col('claim_queries')).strip()} queries)"
    )
    say(
        f"  in process  job_ack (apply acknowledged)     {med(col('ack_service_ms'))}  ({med(col('ack_queries')).strip()} queries)"
    )
    say(
        f"  in process  job_append_log x2 (event, text)  {med(col('two_log_appends_service_ms'))}  ({med(col('log_queries')).strip()} queries)"
    )
    say(f"  HTTP        run_confirm incl. on_commit      {med(col('confirm_commit_ms'))}")
    say(
        f"  HTTP        confirm -> long-poll has job     {med(col('confirm_to_agent_has_job_http_ms'))}"
        "   (run_confirm called in this process)"
    )
    say(f"  HTTP        POST /runs/<id>/confirm/ (API)   {med(col('confirm_commit_ms_api'))}")
    say(
        f"  HTTP        API confirm -> long-poll has job {med(col('confirm_to_agent_has_job_http_ms_api'))}"
        "   (Confirm through the REST API, as a person)"
    )
    say(f"  HTTP        POST ack                         {med(col('ack_http_ms'))}")
    say(f"  HTTP        POST logs (apply_started event)  {med(col('log_event_post_http_ms'))}")
    say(f"  HTTP        POST logs (first text line)      {med(col('log_text_post_http_ms'))}")
    say(f"  HTTP        POST heartbeat (baseline)        {med(col('heartbeat_http_ms'))}")
    tf = out["terraform"]
    say(f"terraform ({tf['exe']}):")
    say(f"  `version`, first line                        {med(tf['version_first_line_ms'])}")
    say(f"  `init` (provider from the mirror), exit      {med(tf['init_ms'])}")
    for variant, rs in tf["apply"].items():
        say(
            f"  `apply plan.out`, {variant:<20} first line {med([r['first_line_ms'] for r in rs])}, "
            f"exit {med([r['exit_ms'] for r in rs]).strip()}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "diagnose.json").write_text(json.dumps(out, indent=2, default=str))
    say(f"raw: {RESULTS / 'diagnose.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
