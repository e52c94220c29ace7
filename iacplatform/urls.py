from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from iacplatform.views_metrics import metrics_view
from tasks_app.tfe import views as tfe_views
from tasks_app.vcs import views as vcs_views


class OfflineRedocView(SpectacularRedocView):
    """Redoc from static files (drf-spectacular-sidecar), with a page that loads no fonts
    from Google, and a policy that keeps its bundle from fetching the Redocly logo from a
    CDN (it hides the image when that fails): the page asks nothing of the network."""

    template_name = "api_docs/redoc.html"

    @extend_schema(exclude=True)  # a page about the API, not a part of it
    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().get(request, *args, **kwargs)
        response["Content-Security-Policy"] = "img-src 'self' data:"
        return response

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", OfflineRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/", include("tasks_app.state_urls")),
    path("api/v1/", include("tasks_app.api_urls")),
    path("api/v1/", include("agents_app.api_urls")),
    path("api/v2/", include("tasks_app.tfe.urls")),
    path(".well-known/terraform.json", tfe_views.well_known, name="tfe-discovery"),
    # Where `terraform login` sends people for a token (it has no login.v1 flow to use here).
    path("app/settings/tokens", RedirectView.as_view(pattern_name="tokens"), name="tfe-token-page"),
    # Forges' webhooks: unauthenticated, proved by their signature (tasks_app/vcs/webhooks.py).
    path("webhooks/<slug:connection>/", vcs_views.webhook, name="vcs-webhook"),
    path("agent/v1/", include("tasks_app.dispatch.agent_urls")),
    path("pools/", include("agents_app.urls")),
    path("", include("tasks_app.urls")),
]

handler404 = "iacplatform.api_errors.not_found"
