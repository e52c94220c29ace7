"""The agent's own housekeeping: old warm dirs and finished dirs go, what the server no longer
reserves goes, what is still warm stays (no server needed: AgentProcess is plain Python)."""

import time

from agents_app.agent.jobs import WarmDir
from agents_app.agent.process import AgentProcess
from agents_app.agent.sandbox import Sandbox
from agents_app.protocol import SandboxMode


def make_agent(tmp_path) -> AgentProcess:
    return AgentProcess(
        server="http://127.0.0.1:9", pool_token="unused", name="hk", work_root=tmp_path, slots=3,
        terraform="terraform", sandbox=Sandbox(SandboxMode.OFF), apply_pending_ttl=24 * 3600, finished_ttl=3600,
    )


def warm_dir(agent: AgentProcess, task_id: int, age: float) -> WarmDir:
    path = agent.work_root / "1" / str(task_id)
    path.mkdir(parents=True)
    (path / "plan.out").write_bytes(b"plan")
    warm = WarmDir(task_id, path, "hash", "plan", created_at=time.time() - age)
    agent.add_warm(warm)
    return warm


def test_it_removes_warm_dirs_older_than_a_day_and_keeps_younger_ones(tmp_path):
    agent = make_agent(tmp_path)
    old = warm_dir(agent, 1, age=25 * 3600)
    young = warm_dir(agent, 2, age=3600)
    agent.housekeeping(release=[])
    assert not old.path.exists() and 1 not in agent.warm
    assert young.path.exists() and 2 in agent.warm


def test_it_removes_dirs_the_server_released(tmp_path):
    agent = make_agent(tmp_path)
    released = warm_dir(agent, 3, age=10)
    agent.housekeeping(release=[3])
    assert not released.path.exists() and 3 not in agent.warm


def test_it_removes_finished_dirs_after_an_hour(tmp_path):
    agent = make_agent(tmp_path)
    recent, stale = tmp_path / "1" / "4", tmp_path / "1" / "5"
    for path in (recent, stale):
        path.mkdir(parents=True)
    agent.finished[recent] = time.time() - 60
    agent.finished[stale] = time.time() - 2 * 3600
    agent.housekeeping(release=[])
    assert recent.exists() and not stale.exists()
