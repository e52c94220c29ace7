"""The claim long-poll as Daphne serves it (a bare ASGI app in front of Django)."""

import pytest
import requests

from tests.factories import make_agent, make_pool

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_answers_bad_claims_with_json_errors(live_url):
    pool, _ = make_pool()
    _, token = make_agent(pool=pool, name="claimer", slots=1)
    url = f"{live_url}/agent/v1/claim"
    auth = {"Authorization": f"Bearer {token}"}

    resp = requests.post(url + "?wait=0", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert resp.status_code == 401 and "agent token" in resp.json()["detail"]
    resp = requests.get(url, headers=auth, timeout=10)
    assert resp.status_code == 405 and resp.json()["detail"] == "use POST"
    resp = requests.post(url + "?wait=soon", headers=auth, timeout=10)
    assert resp.status_code == 400 and "'wait'" in resp.json()["detail"]
    resp = requests.post(url + "?wait=0&max=0", headers=auth, timeout=10)
    assert resp.status_code == 400 and "'max'" in resp.json()["detail"]
    resp = requests.post(url + "?wait=0", headers=auth, timeout=10)
    assert resp.status_code == 204 and resp.content == b""
