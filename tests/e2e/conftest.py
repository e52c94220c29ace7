from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from tests.e2e.apiclient import PlatformUser
from tests.factories import DEMO_MAIN_TF, make_pool

_names = itertools.count(1)


@pytest.fixture
def user(live_url, alice) -> PlatformUser:
    token, _ = Token.objects.get_or_create(user=alice)
    return PlatformUser(live_url, token.key)


class Scenario:
    """A pool, a workspace with the demo config, and a marker file counting applies."""

    def __init__(self, user: PlatformUser, start_agent, tmp_path: Path, *, warm_apply: bool = True,
                 files: dict[str, str] | None = None) -> None:
        self.user = user
        self.start_agent = start_agent
        self.pool, self.token = make_pool(warm_apply=warm_apply)
        self.marker = tmp_path / "applied.txt"
        n = next(_names)
        self.workspace = user.create_workspace(
            f"e2e-{n}", self.pool.id, files or {"main.tf": DEMO_MAIN_TF}, {"marker_file": str(self.marker)}
        )
        self.agents: dict[str, object] = {}

    def agent(self, name: str, **kw):
        proc = self.start_agent(self.token, f"{name}-{self.pool.id}", **kw)
        self.agents[name] = proc
        return proc

    def applies(self) -> int:
        return self.marker.read_text().count("applied") if self.marker.exists() else 0


@pytest.fixture
def scenario(user, start_agent, tmp_path):
    def make(**kw) -> Scenario:
        return Scenario(user, start_agent, tmp_path, **kw)

    return make
