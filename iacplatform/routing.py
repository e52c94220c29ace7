from django.urls import path

from tasks_app.consumers import RunLogConsumer, RunPageConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:task_id>/log/", RunLogConsumer.as_asgi()),
    path("ws/runs/<int:task_id>/", RunPageConsumer.as_asgi()),
]
