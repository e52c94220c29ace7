import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application

import sys  # noqa: E402

from django.conf import settings  # noqa: E402

from iacplatform.asgi_handler import HybridASGIHandler  # noqa: E402

# One process serves both: sync views on threads, and on the event loop the long-polls that
# hand a confirmed apply to its agent. A view computing its answer right after Confirm held
# the GIL for up to Python's 5 ms switch interval while the loop waited to answer the agent;
# a shorter interval (IAC_WEB_GIL_SWITCH_MS) lets the loop answer within about that much.
sys.setswitchinterval(settings.IAC_WEB_GIL_SWITCH_MS / 1000)

# Django's ASGI handler, except that sync views run as under WSGI: one thread hop, not one
# per middleware (iacplatform/asgi_handler.py).
django_asgi_app = HybridASGIHandler()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

# Daphne serves /static/ itself: one process, nothing else to set up on a laptop. A
# production install can put a CDN or reverse proxy in front; the app does not change.
http_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from iacplatform.health import PATHS as HEALTH_PATHS  # noqa: E402
from iacplatform.health import health_asgi  # noqa: E402
from iacplatform.routing import websocket_urlpatterns  # noqa: E402
from tasks_app import sweep_fallback  # noqa: E402
from tasks_app.dispatch.claim import claim_asgi  # noqa: E402

# The control loop keeps running while Celery's broker (Redis), worker or beat is down: every
# web process sweeps when the last Celery sweep is stale (tasks_app/sweep_fallback.py). Off
# with IAC_SWEEP_FALLBACK_AFTER_SECONDS=0 (the test process, which imports this module).
sweep_fallback.start()


async def http_router(scope: dict, receive, send) -> None:
    # The agent's claim long-poll skips Django's middleware: it is the Confirm -> apply hot
    # path (see tasks_app/dispatch/claim.py). Everything else goes through Django.
    if scope["path"] == "/agent/v1/claim":
        await claim_asgi(scope, receive, send)
    elif scope["path"].rstrip("/") in HEALTH_PATHS:
        # Before Django's host check: probes call the pod's IP (iacplatform/health.py).
        await health_asgi(scope, receive, send)
    else:
        await http_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_router,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
