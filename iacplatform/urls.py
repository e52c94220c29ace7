from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from iacplatform.views_metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="api_docs/redoc.html"), name="api-redoc"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/", include("tasks_app.state_urls")),
    path("api/v1/", include("tasks_app.api_urls")),
    path("api/v1/", include("agents_app.api_urls")),
    path("agent/v1/", include("agents_app.agent_urls")),
    path("pools/", include("agents_app.urls")),
    path("", include("tasks_app.urls")),
]

handler404 = "iacplatform.api_errors.not_found"
