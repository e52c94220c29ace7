"""Notifications through real runs: a webhook receiver on the loopback (a real HTTP server in
the test) checks each notification's HMAC-SHA256 signature and sees needs-attention, then
applied; a receiver that answers 500 gets every retry, and the run is not held up by it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SECRET = "receiver-shared-secret"


class Receiver:
    """An HTTP server on the loopback that records what it is sent and answers `status`."""

    def __init__(self, status: int = 204) -> None:
        self.received: list[dict] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(self.headers.get("X-IAC-Signature-256", ""), expected):
                    receiver.bad_signatures += 1
                receiver.received.append({"event": self.headers.get("X-IAC-Event"), "body": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [r["event"] for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(status: int = 204) -> Receiver:
        made.append(Receiver(status))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def test_it_signs_each_notification_and_retries_a_failing_receiver_without_holding_the_run(scenario, receivers,
                                                                                          alice):
    s = scenario()
    s.agent("a1")
    user, ws = s.user, s.workspace["id"]
    good, failing = receivers(), receivers(500)
    ops = user.request("POST", f"/api/v1/workspaces/{ws}/notification-destinations/", expect=201, json={
        "name": "ops", "kind": "webhook", "url": good.url, "secret": SECRET,
        "triggers": ["needs_attention", "applied"]}).json()
    bad = user.request("POST", f"/api/v1/workspaces/{ws}/notification-destinations/", expect=201, json={
        "name": "broken", "kind": "webhook", "url": failing.url, "secret": SECRET, "triggers": ["applied"]}).json()
    assert "secret" not in bad and bad["has_secret"] is True

    run = user.queue(ws)
    user.wait(run["id"], "apply_pending")
    wait_for(lambda: "needs_attention" in good.events(), 20, "the needs-attention notification")
    assert user.confirm(run["id"]).status_code == 200
    user.wait(run["id"], "applied", timeout=90)
    wait_for(lambda: "applied" in good.events(), 20, "the applied notification")

    assert good.events() == ["needs_attention", "applied"] and good.bad_signatures == 0
    applied = good.received[1]["body"]
    assert applied["run"] == run["id"] and applied["status"] == "applied" and applied["trigger"] == "applied"
    assert applied["run_url"].endswith(f"/runs/{run['id']}/")

    def gave_up() -> dict | None:
        destination = user.request("GET", f"/api/v1/notification-destinations/{bad['id']}/", expect=200).json()
        deliveries = destination["recent_deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["status"] == "failed" else None

    failed = wait_for(gave_up, 60, "the failing receiver's retries to run out")
    assert failed["attempts"] == 6 == len(failing.received) and failing.bad_signatures == 0
    assert failed["attempt_log"][0]["status_code"] == 500 and failed["attempt_log"][0]["error"] == "answered 500"
    # The run ended when it ended, whatever the receiver answered.
    assert user.run(run["id"])["status"] == "applied"

    # The workspace page shows the last attempts; its "Send a test" reaches the receiver, signed,
    # as the API's does.
    page = Client()
    page.force_login(alice)
    html = page.get(f"/workspaces/{ws}/").content.decode()
    assert "answered 500" in html and "Send a test" in html
    assert page.post(f"/notification-destinations/{ops['id']}/test/").status_code == 302
    wait_for(lambda: good.events().count("test") == 1, 20, "the page's test notification")
    test = user.request("POST", f"/api/v1/notification-destinations/{ops['id']}/test/", expect=202).json()
    assert test["trigger"] == "test"
    wait_for(lambda: good.events().count("test") == 2, 20, "the API's test notification")
    assert good.bad_signatures == 0
