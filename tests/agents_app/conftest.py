from __future__ import annotations

import pytest

from tests.factories import DEMO_MAIN_TF, make_pool, make_workspace


@pytest.fixture
def setup(db):
    """A pool (with its token) and a workspace with the demo configuration."""
    pool, token = make_pool()
    ws = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    return pool, token, ws
