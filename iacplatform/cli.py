"""`iac`: the platform's command-line client, a thin layer over the REST API with a user's
token. It imports neither Django nor Celery (nor anything else of the platform): a pipeline
needs only click, requests and pathspec.

    export IAC_URL=https://iac.example.com IAC_TOKEN=...
    python -m iacplatform.cli run --workspace demo --dir . --apply --auto-approve

Exit status: 0 when the run ended as asked (planned, nothing to change, applied), 3 when a
soft-mandatory policy holds it for an admin's override (`iac override`), 1 when it
errored, was cancelled or discarded (or the platform refused a request), 2 when it waits for
a confirmation nobody could give (no terminal and no --auto-approve).
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import click
import pathspec
import requests

# Where a run stops for a person, or for good.
PLAN_DONE = {"planned", "planned_no_changes", "apply_pending"}
FINAL = {"planned", "planned_no_changes", "applied", "discarded", "cancelled", "errored"}
SUCCESS = {"planned", "planned_no_changes", "applied"}
# Never uploaded, whatever .terraformignore says (as Terraform's own remote runs do).
ALWAYS_IGNORED = [".git/", ".terraform/"]
WAIT_SECONDS = 30  # each long-poll; the server bounds it at 60


class ApiError(click.ClickException):
    exit_code = 1


class Client:
    def __init__(self, url: str, token: str, timeout: float = WAIT_SECONDS + 30) -> None:
        self.base = url.rstrip("/") + "/api/v1"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "User-Agent": "iac-cli"})
        self.timeout = timeout

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = self.session.request(method, path if path.startswith("http") else self.base + path,
                                            timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise ApiError(f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text[:500]
            raise ApiError(f"{method} {path}: {response.status_code} {detail}")
        return response.json() if response.content else None

    def workspace(self, name_or_id: str) -> dict:
        for ws in self.call("GET", "/workspaces/"):
            if ws["name"] == name_or_id or str(ws["id"]) == name_or_id:
                return ws
        raise ApiError(f"no workspace '{name_or_id}' (or you may not read it)")


def archive(directory: Path) -> tuple[bytes, list[str]]:
    """A .tar.gz of the directory's files, without what `.terraformignore` (gitignore syntax)
    excludes, nor .git/ and .terraform/. Returns the bytes and the archived names."""
    patterns = list(ALWAYS_IGNORED)
    ignore_file = directory / ".terraformignore"
    if ignore_file.is_file():
        patterns += ignore_file.read_text().splitlines()
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    names = sorted(
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and not path.is_symlink()
    )
    names = [name for name in names if not spec.match_file(name)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            tar.add(directory / name, arcname=name, recursive=False)
    return buffer.getvalue(), names


def plan_summary_line(summary: dict | None) -> str:
    if not summary:
        return "No plan summary."
    parts = [f"{summary.get('add', 0)} to add", f"{summary.get('change', 0)} to change",
             f"{summary.get('destroy', 0)} to destroy"]
    if summary.get("import"):
        parts.insert(0, f"{summary['import']} to import")
    return "Plan: " + ", ".join(parts) + "."


def policy_lines(run: dict) -> list[str]:
    """The run's policy check as the terraform CLI shows one: each policy, pass or FAIL, its
    messages; nothing for a run no policy governs."""
    status, check = run.get("policy_status") or "", run.get("policy_check") or {}
    if not status:
        return []
    results = check.get("results") or []
    failed = sum(1 for r in results if not r["passed"])
    lines = [f"Policy check: {status} ({len(results) - failed} of {len(results)} policies passed)"]
    for r in results:
        lines.append(f"  {'pass' if r['passed'] else 'FAIL'}  {r['policy_set']}/{r['policy']} ({r['level']})")
        lines += [f"        {text}" for text in ([r["error"]] if r.get("error") else []) + r["deny"]]
        lines += [f"        warning: {text}" for text in r["warn"]]
    if check.get("overridden_by"):
        lines.append(f"  overridden by {check['overridden_by']}: {check.get('override_reason', '')}")
    return lines


def follow(client: Client, run_id: int, offset: int, stop: set[str], out: Any) -> tuple[dict, int]:
    """Print the run's log from `offset` until the run reaches one of `stop`; returns the run
    then and the offset reached. The log is long-polled (`?wait=`): no sleep loop."""
    while True:
        # `until`: the poll also answers when the run reaches `stop` (apply_pending: no more
        # log until Confirm), not after its whole wait.
        page = client.call("GET", f"/runs/{run_id}/logs/",
                           params={"offset": offset, "wait": WAIT_SECONDS, "until": sorted(stop)})
        out.write(page["text"])
        out.flush()
        offset = page["next_offset"]
        if page["complete"]:
            return client.call("GET", f"/runs/{run_id}/"), offset
        run = client.call("GET", f"/runs/{run_id}/")
        if run["status"] in stop:  # e.g. apply_pending: no more log until Confirm; read what is there
            while (rest := client.call("GET", f"/runs/{run_id}/logs/", params={"offset": offset}))["text"]:
                out.write(rest["text"])
                offset = rest["next_offset"]
            out.flush()
            return run, offset


def wait_status(client: Client, run_id: int, until: set[str]) -> dict:
    while True:
        run = client.call("GET", f"/runs/{run_id}/", params={"wait": WAIT_SECONDS, "until": sorted(until)})
        if run["status"] in until:
            return run


@click.group()
@click.option("--url", envvar="IAC_URL", required=True, help="the platform's address (or IAC_URL)")
@click.option("--token", envvar="IAC_TOKEN", required=True, help="your API token (or IAC_TOKEN, better: not in `ps`)")
@click.pass_context
def main(ctx: click.Context, url: str, token: str) -> None:
    """Drive the IaC platform from a terminal or a pipeline."""
    ctx.obj = Client(url, token)


@main.command()
@click.pass_obj
def workspaces(client: Client) -> None:
    """List the workspaces you may read."""
    for ws in client.call("GET", "/workspaces/"):
        click.echo(f"{ws['id']}\t{ws['name']}\tpool {ws['pool']}{'  (locked)' if ws['locked'] else ''}")


@main.command()
@click.option("--workspace", "-w", required=True, help="name or id")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".",
              show_default=True)
@click.pass_obj
def upload(client: Client, workspace: str, directory: Path) -> None:
    """Upload a directory as the workspace's new configuration (honouring .terraformignore)."""
    ws = client.workspace(workspace)
    cv = _upload(client, ws, directory)
    click.echo(f"configuration version {cv['id']}: {len(cv['files'])} files, sha256 {cv['sha256']}")


def _upload(client: Client, ws: dict, directory: Path) -> dict:
    data, names = archive(directory)
    if not names:
        raise ApiError(f"nothing to upload in {directory} (everything is ignored?)")
    return client.call("POST", f"/workspaces/{ws['id']}/configuration-versions/", data=data,
                       headers={"Content-Type": "application/gzip"})


@main.command()
@click.option("--workspace", "-w", required=True, help="name or id")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="upload this directory first (honouring .terraformignore)")
@click.option("--apply", "apply_", is_flag=True, help="plan and apply (default: plan only)")
@click.option("--auto-approve", is_flag=True, help="confirm the apply without asking")
@click.option("--destroy", is_flag=True, help="plan to destroy everything (terraform plan -destroy)")
@click.option("--refresh-only", is_flag=True, help="only refresh the state (terraform plan -refresh-only)")
@click.option("--target", "targets", multiple=True, metavar="ADDRESS", help="terraform -target (repeatable)")
@click.option("--replace", "replace", multiple=True, metavar="ADDRESS", help="terraform -replace (repeatable)")
@click.pass_obj
def run(client: Client, workspace: str, directory: Path | None, apply_: bool, auto_approve: bool, destroy: bool,
        refresh_only: bool, targets: tuple[str, ...], replace: tuple[str, ...]) -> None:
    """Queue a run, stream its log, print the plan summary, confirm (or ask), and exit
    non-zero unless it ends as asked."""
    if destroy and refresh_only:
        raise click.UsageError("--destroy and --refresh-only exclude each other")
    mode = "destroy" if destroy else "refresh_only" if refresh_only else "normal"
    ws = client.workspace(workspace)
    if directory is not None:
        cv = _upload(client, ws, directory)
        click.echo(f"uploaded configuration version {cv['id']} ({len(cv['files'])} files)", err=True)
    created = client.call("POST", f"/workspaces/{ws['id']}/runs/", json={
        "operation": "plan_and_apply" if apply_ else "plan",
        "mode": mode, "targets": list(targets), "replace": list(replace),
    })
    run_id = created["id"]
    click.echo(f"run {run_id} queued on workspace {ws['name']}", err=True)
    current, offset = follow(client, run_id, 0, PLAN_DONE | FINAL, sys.stdout)
    click.echo(plan_summary_line(current.get("plan_summary")), err=True)
    for line in policy_lines(current):
        click.echo(line, err=True)
    if current["status"] == "apply_pending" and current.get("policy_status") == "soft_failed":
        click.echo(f"run {run_id}: a soft-mandatory policy failed; an admin of the workspace may override it "
                   f"(iac override {run_id} --reason '...'), then confirm it", err=True)
        sys.exit(3)
    if current["status"] == "apply_pending":
        if auto_approve:
            approved = True
        elif sys.stdin.isatty():
            approved = click.confirm(f"Apply run {run_id}?", default=False, err=True)
        else:
            click.echo(f"run {run_id} waits for confirmation: confirm it on the platform, or use --auto-approve",
                       err=True)
            sys.exit(2)
        if approved:
            client.call("POST", f"/runs/{run_id}/confirm/", json={"comment": "confirmed from the CLI"})
            current, offset = follow(client, run_id, offset, FINAL, sys.stdout)
        else:
            current = client.call("POST", f"/runs/{run_id}/discard/", json={"comment": "discarded from the CLI"})
    _finish(current)


def _finish(current: dict) -> None:
    message = f" ({current['message']})" if current.get("message") else ""
    click.echo(f"run {current['id']}: {current['status']}{message}", err=True)
    sys.exit(0 if current["status"] in SUCCESS else 1)


@main.command()
@click.argument("run_id", type=int)
@click.option("--follow/--no-follow", "follow_", default=True, show_default=True)
@click.pass_obj
def logs(client: Client, run_id: int, follow_: bool) -> None:
    """Print a run's log (following it until the run ends)."""
    if follow_:
        follow(client, run_id, 0, FINAL, sys.stdout)
        return
    offset = 0
    while True:
        page = client.call("GET", f"/runs/{run_id}/logs/", params={"offset": offset})
        sys.stdout.write(page["text"])
        if not page["text"] or page["next_offset"] == offset:
            return
        offset = page["next_offset"]


@main.command()
@click.argument("run_id", type=int)
@click.option("--comment", default="")
@click.pass_obj
def confirm(client: Client, run_id: int, comment: str) -> None:
    """Confirm a run waiting in apply_pending, then follow it to its end."""
    client.call("POST", f"/runs/{run_id}/confirm/", json={"comment": comment})
    _finish(wait_status(client, run_id, FINAL))


@main.command()
@click.argument("run_id", type=int)
@click.option("--comment", default="")
@click.pass_obj
def discard(client: Client, run_id: int, comment: str) -> None:
    """Discard a run waiting in apply_pending."""
    client.call("POST", f"/runs/{run_id}/discard/", json={"comment": comment})


@main.command()
@click.argument("run_id", type=int)
@click.pass_obj
def status(client: Client, run_id: int) -> None:
    """A run's status, message, plan summary and the commit it is (a run from git)."""
    current = client.call("GET", f"/runs/{run_id}/")
    click.echo(f"run {run_id}: {current['status']}  {current['message']}".rstrip())
    click.echo(plan_summary_line(current.get("plan_summary")))
    commit = current.get("commit")
    if commit:
        ref = f"tag {commit['tag']}" if commit.get("tag") else commit.get("branch") or ""
        pr = f", pull request #{commit['pull_request']}" if commit.get("pull_request") else ""
        subject = (commit.get("message") or "").splitlines()[0] if commit.get("message") else ""
        click.echo(f"commit {commit['sha'][:12]} of {commit['repository']} ({ref}{pr}) by {commit.get('author') or '?'}:"
                   f" {subject}".rstrip())
        if commit.get("newer_commit"):
            click.echo(f"a newer commit is on {commit.get('branch')}: {commit['newer_commit'][:12]}")
    for line in policy_lines(current):
        click.echo(line)


@main.command()
@click.argument("run_id", type=int)
@click.option("--reason", required=True, help="why the failed policy may be overridden (audited)")
@click.pass_obj
def override(client: Client, run_id: int, reason: str) -> None:
    """Override a run's soft-failed policy check (admin on the workspace); confirm it next."""
    current = client.call("POST", f"/runs/{run_id}/override/", json={"reason": reason})
    click.echo(f"run {run_id}: policy check {current['policy_status']}", err=True)


if __name__ == "__main__":
    main(prog_name=os.environ.get("IAC_PROG_NAME", "iac"))
